"""Learning curves: how much more data would buy. The model is fitted on growing, nested fractions
of the training split (Ray tasks, same booster parameters as training), scored on the holdout, and
a power law `a - b*n^-c` is fitted to say where doubling the data stops paying.
`jobs.learning_curve` is the CLI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import ray
import xgboost as xgb

from shipyard.config.jobs import TrainJobConfig
from shipyard.training import evaluation as ev

logger = logging.getLogger(__name__)


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return np.asarray(a - b * np.power(n, -c))


def fit_curve(
    rows: list[int], scores: list[float], higher_is_better: bool, min_gain: float
) -> dict[str, Any]:
    """Fit the curve; say at what size doubling the data adds less than `min_gain`.

    Pure (no Ray): the unit tests check it against curves with a known answer.
    """
    from scipy.optimize import curve_fit

    n = np.asarray(rows, dtype=float)
    y = np.asarray(scores, dtype=float) * (1 if higher_is_better else -1)
    out: dict[str, Any] = {"fit": None, "saturation_rows": None, "gain_if_doubled": None}
    try:
        (a, b, c), _ = curve_fit(
            power_law, n, y, p0=(y.max(), max(1e-6, y.max() - y.min()) * n.min() ** 0.5, 0.5),
            bounds=([-np.inf, 0.0, 1e-3], [np.inf, np.inf, 3.0]), maxfev=20000,
        )  # fmt: skip
    except (RuntimeError, ValueError) as err:
        out["fit_error"] = str(err)
        gains = np.diff(y)
        out["gain_if_doubled"] = float(gains[-1]) if len(gains) else None
        return out
    sign = 1 if higher_is_better else -1
    out["fit"] = {"a": float(a) * sign, "b": float(b), "c": float(c), "form": "a - b*n^-c"}

    def gain(m: float) -> float:  # predicted improvement from doubling m rows
        return float(b * (m ** (-c) - (2 * m) ** (-c)))

    out["gain_if_doubled"] = gain(float(n.max()))
    out["ceiling"] = float(a) * sign
    # gain(m) = b m^-c (1 - 2^-c) < min_gain  <=>  m > (b (1 - 2^-c) / min_gain)^(1/c)
    with np.errstate(over="ignore"):
        saturation = float((b * (1 - 2.0**-c) / min_gain) ** (1 / c))
    # A flat fitted exponent puts saturation past any reachable size: say so (None), not inf.
    out["saturation_rows"] = int(np.ceil(saturation)) if np.isfinite(saturation) else None
    return out


@ray.remote  # type: ignore[untyped-decorator]
def _fit_fraction(
    arrays: dict[str, Any], params: dict[str, Any], n: int, seed: int, rounds: int, patience: int
) -> tuple[int, int, bytes]:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(arrays["y_train"]))[:n]  # a nested prefix per seed
    dtrain = xgb.DMatrix(
        arrays["x_train"][idx], label=arrays["y_train"][idx], feature_names=arrays["names"]
    )
    dvalid = xgb.DMatrix(arrays["x_valid"], label=arrays["y_valid"], feature_names=arrays["names"])
    booster = xgb.train(
        params, dtrain, num_boost_round=rounds, evals=[(dvalid, "valid")],
        early_stopping_rounds=patience, verbose_eval=False,
    )  # fmt: skip
    best = int(booster.best_iteration) + 1
    return n, seed, bytes(booster[:best].save_raw("ubj"))


def run_curve(
    cfg: TrainJobConfig, fractions: list[float], repeats: int, min_gain: float, cpus: float
) -> dict[str, Any]:
    from shipyard.bundle.graph import native_predict
    from shipyard.training import data as data_mod
    from shipyard.training.fit import train_params

    prep = data_mod.prepare(cfg.data)
    arrays = data_mod.to_arrays(prep)
    schema, task = prep.schema, cfg.data.task
    params = {**train_params(cfg.train, schema, cfg.data.seed), "nthread": max(1, int(cpus))}
    total = len(arrays["y_train"])
    sizes = sorted({max(50, round(f * total)) for f in fractions})
    ref = ray.put(arrays)
    fit = _fit_fraction.options(num_cpus=cpus)
    pending = [
        fit.remote(
            ref,
            params,
            n,
            cfg.data.seed + r,
            cfg.train.num_boost_round,
            cfg.train.early_stopping_rounds,
        )
        for n in sizes
        for r in range(repeats)
    ]
    y = schema.encode_target(prep.holdout[cfg.data.target])
    primary, higher = ev.PRIMARY[task]
    by_size: dict[int, list[float]] = {n: [] for n in sizes}
    for n, _seed, raw in ray.get(pending):
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        by_size[n].append(
            ev.task_metrics(task, y, native_predict(booster, schema, prep.holdout))[primary]
        )
    points = [
        {"rows": n, primary: float(np.mean(v)), "std": float(np.std(v)), "repeats": len(v)}
        for n, v in sorted(by_size.items())
    ]
    curve = fit_curve(
        [int(p["rows"]) for p in points], [p[primary] for p in points], higher, min_gain
    )
    sat = curve["saturation_rows"]
    if sat is None:
        verdict = "no curve could be fitted; see the points"
    elif sat <= total:
        verdict = (
            f"more data stops paying at about {sat:,} training rows (doubling adds < {min_gain} "
            f"{primary}); this run has {total:,}"
        )
    else:
        verdict = (
            f"more data still pays: doubling the {total:,} training rows is predicted to add "
            f"{curve['gain_if_doubled']:.4f} {primary}; it stops paying at about {sat:,} rows"
        )
        if sat > 4 * total:
            verdict += f" (extrapolated {sat / total:.0f}x beyond the data: a rough guide only)"
    return {
        "model": cfg.model.name, "metric": primary, "higher_is_better": higher,
        "train_rows": total, "points": points, "curve": curve, "min_gain": min_gain,
        "verdict": verdict,
    }  # fmt: skip


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = report["metric"]
    xs = np.array([p["rows"] for p in report["points"]], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(xs, [p[metric] for p in report["points"]], yerr=[p["std"] for p in report["points"]],
                fmt="o", label="holdout")  # fmt: skip
    fit, sat = report["curve"]["fit"], report["curve"]["saturation_rows"]
    if fit:
        # Up to where more data stops paying, if that is within 100x the data (a nearly flat fit
        # can put it at 10^30 rows, past float64 arithmetic on ints; the verdict says where).
        right = float(xs.max()) * 4
        if sat and float(sat) <= xs.max() * 100:
            right = max(right, float(sat))
        grid = np.geomspace(float(xs.min()), right, 100)
        sign = 1 if report["higher_is_better"] else -1
        ax.plot(
            grid, sign * power_law(grid, sign * fit["a"], fit["b"], fit["c"]), "--", label="fit"
        )
        if sat and float(sat) <= right:
            ax.axvline(float(sat), color="grey", lw=1, label="stops paying")
    ax.set_xscale("log")
    ax.set_xlabel("training rows")
    ax.set_ylabel(metric)
    ax.set_title(f"{report['model']}: learning curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
