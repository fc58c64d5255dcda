"""Ray Data: resolve and read the files, validate, split, profile and encode the training data."""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import ray
import ray.data

from shipyard.bundle.profile import ProfileAccumulator, quantile_edges
from shipyard.bundle.schema import Feature, InputSchema
from shipyard.config.jobs import DataSection
from shipyard.errors import DataValidationError
from shipyard.training import dataspec

logger = logging.getLogger(__name__)

PROFILE_SAMPLE_ROWS = 100_000
MIN_SPLIT_ROWS = 10


@dataclasses.dataclass
class SourceFiles:
    paths: list[str]
    filesystem: pafs.FileSystem
    fmt: str


def resolve_files(path: str, fmt: str = "auto") -> SourceFiles:
    """File, directory or glob, local or URI -> the data files it names (parquet or CSV)."""
    if "://" in path:
        scheme, rest = path.split("://", 1)
        has_glob = any(ch in rest for ch in "*?[")
        base = rest.split("*")[0].rsplit("/", 1)[0] if has_glob else rest
        fs, root = pafs.FileSystem.from_uri(f"{scheme}://{base}")
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File and not has_glob:
            found = [root]
        elif info.type == pafs.FileType.Directory:
            listed = [
                i.path
                for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                if i.is_file
            ]
            pattern = root + rest[len(base) :]
            found = [f for f in listed if fnmatch.fnmatch(f, pattern)] if has_glob else listed
        else:
            found = []
    else:
        fs = pafs.LocalFileSystem()
        p = os.path.abspath(os.path.expanduser(path))
        if os.path.isdir(p):
            found = [os.path.join(d, f) for d, _, names in os.walk(p) for f in names]
        else:
            found = [f for f in glob.glob(p, recursive=True) if os.path.isfile(f)]
    found = sorted(f for f in found if not os.path.basename(f).startswith(("_", ".")))
    if fmt == "auto":
        kinds = {
            "parquet"
            if f.endswith((".parquet", ".pq"))
            else "csv"
            if f.endswith((".csv", ".csv.gz"))
            else "?"
            for f in found
        }
        found = [f for f in found if f.endswith((".parquet", ".pq", ".csv", ".csv.gz"))]
        kinds.discard("?")
        if len(kinds) > 1:
            raise DataValidationError(
                f"data.path {path!r} matches both parquet and CSV files; set data.format or "
                "narrow the path"
            )
        fmt = kinds.pop() if kinds else "parquet"
    if not found:
        raise DataValidationError(
            f"data.path {path!r} matches no parquet or CSV files; accepted: a file, a directory "
            "or a glob (local, s3:// or gs://)"
        )
    return SourceFiles(found, fs, fmt)


def fingerprint(src: SourceFiles, mode: str = "content") -> dict[str, Any]:
    """Hash of the files' names, sizes and (mode=content) bytes: same data, same fingerprint."""
    whole = hashlib.sha256()
    files = []
    for p in src.paths:
        info = src.filesystem.get_file_info(p)
        entry: dict[str, Any] = {"path": p, "size": info.size}
        if mode == "content":
            h = hashlib.sha256()
            with src.filesystem.open_input_stream(p) as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
            entry["sha256"] = h.hexdigest()
        else:
            entry["mtime_ns"] = info.mtime_ns
        files.append(entry)
        whole.update(json.dumps({k: v for k, v in entry.items() if k != "path"}).encode())
        whole.update(os.path.basename(p).encode())
    return {"mode": mode, "sha256": whole.hexdigest(), "files": files}


def read(src: SourceFiles, datasource_v2: bool = False) -> ray.data.Dataset:
    ray.data.DataContext.get_current().use_datasource_v2 = datasource_v2
    fs = None if isinstance(src.filesystem, pafs.LocalFileSystem) else src.filesystem
    if src.fmt == "parquet":
        return ray.data.read_parquet(src.paths, filesystem=fs)
    return ray.data.read_csv(src.paths, filesystem=fs)


class _TagSplit:
    def __init__(self, cfg: DataSection, cutoff: Any) -> None:
        self.cfg, self.cutoff = cfg, cutoff

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        df = df[df[self.cfg.target].notna()]
        df[dataspec.SPLIT_COLUMN] = dataspec.split_codes(
            df,
            self.cfg.holdout,
            self.cfg.seed,
            self.cfg.time_column,
            self.cutoff,
            target=self.cfg.target,
        )
        return df


def _only(split: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def keep(df: pd.DataFrame) -> pd.DataFrame:
        return df[df[dataspec.SPLIT_COLUMN] == split].drop(columns=[dataspec.SPLIT_COLUMN])

    return keep


class _Profile:
    """Partial profile of one batch, serialised so Ray can return it as a row."""

    def __init__(
        self, edges: dict[str, list[float]], categorical: list[str], target: str, task: str
    ):
        self.edges, self.categorical, self.target, self.task = edges, categorical, target, task

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        acc = ProfileAccumulator.create(self.edges, self.categorical)
        acc.update(df)
        target: list[list[Any]] = []
        if self.task != "regression":
            vc = df[self.target].value_counts(dropna=True)
            target = [[k.item() if isinstance(k, np.generic) else k, int(c)] for k, c in vc.items()]
        return pd.DataFrame(
            {"profile": [json.dumps(acc.to_dict())], "target": [json.dumps(target)]}
        )


class Encode:
    def __init__(self, schema: InputSchema) -> None:
        self.schema = schema

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        x = self.schema.encode(df)
        out = pd.DataFrame(x, columns=self.schema.names)
        out[dataspec.LABEL_COLUMN] = self.schema.encode_target(df[self.schema.target])
        return out


@dataclasses.dataclass
class Prepared:
    schema: InputSchema
    plan: dataspec.ColumnPlan
    train: ray.data.Dataset  # encoded, materialized
    valid: ray.data.Dataset  # encoded, materialized
    holdout: pd.DataFrame  # raw, for evaluation, slices and ONNX parity
    sample: pd.DataFrame  # raw sample of the training split (baseline, bin edges)
    profile: ProfileAccumulator  # training split, on fixed edges
    rows: dict[str, int]
    fingerprint: dict[str, Any]
    notes: list[str]


def prepare(cfg: DataSection, carry: Sequence[str] = ()) -> Prepared:
    """Read, validate and split the data, fit preprocessing on the training split only.
    `carry`: columns kept in the holdout for evaluation (groups, slices) whether or not they
    are features."""
    src = resolve_files(cfg.path, cfg.format)
    fp = fingerprint(src, cfg.fingerprint)
    try:
        raw = read(
            src, cfg.ray_datasource_v2
        ).materialize()  # one read; every pass below starts from these blocks
    except Exception as err:  # unreadable file: name it rather than a stack of Ray frames
        raise DataValidationError(f"data.path {cfg.path!r} could not be read: {err}") from None
    arrow_schema = raw.schema()
    if arrow_schema is None or raw.count() == 0:
        raise DataValidationError(f"data.path {cfg.path!r} matched files that hold no rows")
    plan = dataspec.plan_columns(arrow_schema.base_schema, cfg)
    unknown = [c for c in carry if c not in arrow_schema.names]
    if unknown:
        raise DataValidationError(
            f"fairness.sensitive / gates.slice_columns: column(s) {unknown} are not in the data; "
            f"columns are {list(arrow_schema.names)}"
        )
    keep = [*plan.features, cfg.target, *([cfg.time_column] if cfg.time_column else [])]
    keep += [c for c in carry if c not in keep]
    ds = raw.select_columns(keep)

    cutoff = None
    if cfg.time_column:
        times = ds.select_columns([cfg.time_column]).to_pandas()[cfg.time_column]
        cutoff = times.quantile(1 - cfg.holdout, interpolation="higher")

    # Hash every row once; the three splits below are cheap filters over these blocks.
    tagged = ds.map_batches(_TagSplit(cfg, cutoff), batch_format="pandas").materialize()
    del raw, ds  # the tagged blocks hold everything from here on; let Ray free the raw ones
    train_raw = tagged.map_batches(_only(dataspec.TRAIN), batch_format="pandas")
    valid_raw = tagged.map_batches(_only(dataspec.VALID), batch_format="pandas")
    holdout = tagged.map_batches(_only(dataspec.HOLDOUT), batch_format="pandas").to_pandas()

    n_train = train_raw.count()
    if n_train == 0 and len(holdout) == 0:
        raise DataValidationError(
            f"data.path {cfg.path!r}: no rows with a value in target {cfg.target!r}"
            " (the target is always missing)"
        )
    frac = min(1.0, PROFILE_SAMPLE_ROWS / max(1, n_train))
    sample = (train_raw.random_sample(frac, seed=cfg.seed) if frac < 1 else train_raw).to_pandas()
    edges = {c: quantile_edges(pd.to_numeric(sample[c]).to_numpy(np.float64)) for c in plan.numeric}
    partials = train_raw.map_batches(
        _Profile(edges, list(plan.categorical), cfg.target, cfg.task), batch_format="pandas"
    ).take_all()
    profile = ProfileAccumulator.create(edges, list(plan.categorical))
    target_counts: dict[Any, int] = {}
    for row in partials:
        profile.merge(ProfileAccumulator.from_dict(json.loads(row["profile"])))
        for value, c in json.loads(row["target"]):
            target_counts[value] = target_counts.get(value, 0) + c
    classes = dataspec.check_classes(cfg.task, cfg.target, target_counts, cfg.positive_class)

    notes = list(plan.notes)
    features: list[Feature] = [Feature(c, "numeric") for c in plan.numeric]
    dropped = list(plan.dropped)
    for c in plan.categorical:
        cats = profile.categorical[c].top(cfg.max_categories)
        if not cats:
            dropped.append(c)
            notes.append(f"categorical column {c!r} is always missing and was dropped")
            continue
        features.append(Feature(c, "categorical", tuple(cats)))
    schema = InputSchema(
        task=cfg.task,
        target=cfg.target,
        features=tuple(features),
        classes=tuple(classes),
        time_column=cfg.time_column,
        dropped=tuple(dropped),
    )
    encode = Encode(schema)
    train = train_raw.map_batches(encode, batch_format="pandas").materialize()
    valid = valid_raw.map_batches(encode, batch_format="pandas").materialize()
    rows = {"train": train.count(), "valid": valid.count(), "holdout": len(holdout)}
    for split, n in rows.items():
        if n < MIN_SPLIT_ROWS:
            raise DataValidationError(
                f"the {split} split has {n} rows; need at least {MIN_SPLIT_ROWS} — add data or "
                f"change data.holdout ({cfg.holdout})"
            )
    for n in notes:
        logger.warning(n)
    return Prepared(schema, plan, train, valid, holdout, sample, profile, rows, fp, notes)


def to_arrays(prep: Prepared) -> dict[str, Any]:
    """The encoded train and valid splits as float32 features + labels, for in-process boosting
    (tuning trials, learning-curve fits): the same encoding jobs.train's workers see."""
    names = prep.schema.names
    out: dict[str, Any] = {"names": names}
    for split, ds in (("train", prep.train), ("valid", prep.valid)):
        df = ds.to_pandas()
        out[f"x_{split}"] = df[names].to_numpy(np.float32)
        out[f"y_{split}"] = df[dataspec.LABEL_COLUMN].to_numpy()
    return out
