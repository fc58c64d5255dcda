"""Deterministic generator of realistic mixed-type tabular data, with named drift scenarios.

A subscription-churn-like table: numeric and categorical features, missing values, a timestamp,
an irrelevant noise feature and a binary target with real signal. Scenarios shift chosen parts
of it so that drift detection and A/B tests have ground truth to check against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP"]
COUNTRY_P = [0.35, 0.12, 0.12, 0.10, 0.14, 0.10, 0.07]
DEVICES = ["mobile", "desktop", "tablet"]
DEVICE_P = [0.55, 0.35, 0.10]
PLANS = ["free", "basic", "pro", "enterprise"]
PLAN_P = [0.40, 0.30, 0.22, 0.08]
CHANNELS = ["organic", "paid", "referral", "email", "social"]
CHANNEL_P = [0.35, 0.25, 0.12, 0.16, 0.12]
UNSEEN_COUNTRIES = ["MX", "NG"]

NUMERIC = [
    "age",
    "income",
    "tenure_months",
    "sessions_30d",
    "avg_basket",
    "discount_rate",
    "support_tickets",
    "days_since_last",
    "noise",
]
CATEGORICAL = ["country", "device", "plan", "channel"]
GENERATOR_VERSION = 2  # bump when the generated data changes
TARGET = "churned"
TIME_COLUMN = "ts"
ID_COLUMN = "customer_id"
START = np.datetime64("2026-01-01T00:00:00")
SPAN_SECONDS = 180 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A named change to the generating process, and the features it touches."""

    name: str
    description: str
    touched: tuple[str, ...]
    concept: bool = False  # True: inputs unchanged, the input -> label relation changes


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("none", "no change", ()),
        Scenario(
            "covariate_shift",
            "income and sessions_30d shift up by about one standard deviation",
            ("income", "sessions_30d"),
        ),
        Scenario("category_mix", "device mix moves to 80% mobile", ("device",)),
        Scenario("missing_spike", "income missing rate rises from 5% to 40%", ("income",)),
        Scenario("unseen_categories", "20% of rows come from new countries", ("country",)),
        Scenario(
            "concept_drift",
            "inputs unchanged; discounts now raise churn and sessions no longer protect",
            (),
            concept=True,
        ),
    ]
}


def _check_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ValueError(f"unknown drift scenario {name!r}; accepted: {sorted(SCENARIOS)}")
    return SCENARIOS[name]


def generate(
    n_rows: int,
    seed: int = 0,
    scenario: str = "none",
    extra_numeric: int = 0,
    start_id: int = 0,
) -> pd.DataFrame:
    """Generate `n_rows` rows; the same arguments always give the same frame.

    `extra_numeric` appends weakly informative numeric columns `x0..`, to reach a wider table.
    """
    sc = _check_scenario(scenario)
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0 (got {n_rows})")
    rng = np.random.default_rng(np.random.SeedSequence([seed, start_id, 7919]))
    n = n_rows

    age = np.clip(rng.normal(40, 12, n), 18, 90).round()
    income = rng.lognormal(10.8, 0.5, n)
    tenure = np.minimum(rng.exponential(24, n), 240).round()
    sessions = rng.poisson(12, n).astype(float)
    basket = rng.gamma(2.0, 30.0, n)
    discount = rng.beta(2, 8, n)
    tickets = rng.poisson(0.8, n).astype(float)
    since_last = rng.exponential(10, n).round(1)
    noise = rng.uniform(0, 1, n)

    device_p = [0.80, 0.15, 0.05] if scenario == "category_mix" else DEVICE_P
    country = rng.choice(COUNTRIES, n, p=COUNTRY_P).astype(object)
    device = rng.choice(DEVICES, n, p=device_p).astype(object)
    plan = rng.choice(PLANS, n, p=PLAN_P).astype(object)
    channel = rng.choice(CHANNELS, n, p=CHANNEL_P).astype(object)

    if scenario == "covariate_shift":
        income = income * np.exp(0.5)  # +1 sd on the log scale
        sessions = sessions + rng.poisson(3.5, n)
    if scenario == "unseen_categories":
        new = rng.random(n) < 0.2
        country[new] = rng.choice(UNSEEN_COUNTRIES, int(new.sum()))

    # Label: thresholds, saturation and interactions, as in real churn data (so trees beat a
    # linear baseline); sessions always lower churn, the noise column has no effect.
    plan_eff = pd.Series({"free": 0.5, "basic": 0.1, "pro": -0.4, "enterprise": -0.9})
    country_eff = pd.Series(
        {"US": 0.0, "GB": 0.1, "DE": -0.1, "FR": 0.15, "IN": 0.3, "BR": 0.25, "JP": -0.2}
    )
    is_free = plan == "free"
    disc_coef, sess_coef = (2.0, 0.0) if sc.concept else (-2.5, -1.0)
    logit = (
        -0.2
        + sess_coef * np.tanh((sessions - 10) / 5)
        - 0.9 * np.tanh((tenure - 12) / 8)
        + 0.6 * (tickets >= 2) * (1 + (tickets >= 4))
        + 1.0 * (since_last > 14)
        + disc_coef * (discount - 0.2) * np.where(is_free, 2.0, 0.5)
        - 0.4 * (np.log(income) - 10.8)
        + 0.0012 * (age - 45) ** 2
        + 1.2 * (is_free & (sessions < 8))
        + plan_eff.reindex(plan).to_numpy()
        + country_eff.reindex(country).fillna(0.2).to_numpy()
        + np.where(device == "mobile", 0.15, 0.0)
        - 0.6 * (device == "desktop") * (basket > 80)
    )
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    # Missing values, applied after the label so that missingness itself is uninformative.
    income_missing = 0.40 if scenario == "missing_spike" else 0.05
    income[rng.random(n) < income_missing] = np.nan
    basket[rng.random(n) < 0.03] = np.nan
    channel[rng.random(n) < 0.02] = None

    ts = START + (np.sort(rng.integers(0, SPAN_SECONDS, n))).astype("timedelta64[s]")
    frame = {
        ID_COLUMN: np.arange(start_id, start_id + n, dtype=np.int64),
        TIME_COLUMN: ts.astype("datetime64[ms]"),
        "age": age,
        "income": income.round(2),
        "tenure_months": tenure,
        "sessions_30d": sessions,
        "avg_basket": basket.round(2),
        "discount_rate": discount.round(4),
        "support_tickets": tickets,
        "days_since_last": since_last,
        "noise": noise,
        "country": country,
        "device": device,
        "plan": plan,
        "channel": channel,
    }
    for i in range(extra_numeric):
        frame[f"x{i}"] = rng.normal(0, 1, n) + 0.05 * churned * (i % 3 == 0)
    frame[TARGET] = churned
    df = pd.DataFrame(frame)
    for col in CATEGORICAL:
        df[col] = df[col].astype("string")
    return df


def iter_chunks(
    n_rows: int, chunk_rows: int, seed: int = 0, **kwargs: object
) -> Iterator[pd.DataFrame]:
    """Yield the data in chunks; each chunk is seeded by its first row id, so it is reproducible."""
    for first in range(0, n_rows, chunk_rows):
        yield generate(min(chunk_rows, n_rows - first), seed=seed, start_id=first, **kwargs)  # type: ignore[arg-type]


def write_dataset(
    out_dir: str | Path,
    n_rows: int,
    seed: int = 0,
    scenario: str = "none",
    files: int = 4,
    fmt: str = "parquet",
    extra_numeric: int = 0,
) -> list[Path]:
    """Write the dataset as `files` parquet or CSV files under `out_dir` and return their paths."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv' (got {fmt!r})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chunk = max(1, -(-n_rows // max(1, files)))
    paths = []
    for i, df in enumerate(
        iter_chunks(n_rows, chunk, seed=seed, scenario=scenario, extra_numeric=extra_numeric)
    ):
        p = out / f"part-{i:05d}.{fmt}"
        if fmt == "parquet":
            df.to_parquet(p, index=False)
        else:
            df.to_csv(p, index=False)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Generate Shipyard's default dataset.")
    ap.add_argument("out_dir")
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", default="none", choices=sorted(SCENARIOS))
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--format", default="parquet", choices=["parquet", "csv"])
    ap.add_argument("--extra-numeric", type=int, default=0)
    a = ap.parse_args(argv)
    paths = write_dataset(a.out_dir, a.rows, a.seed, a.scenario, a.files, a.format, a.extra_numeric)
    print(f"wrote {a.rows} rows to {len(paths)} files under {a.out_dir}")


if __name__ == "__main__":
    main()
