"""Typed job configs, loaded from YAML; every error names the key, the bad value and what is accepted."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from shipyard.config.base import Strict, load_config

Task = Literal["binary", "multiclass", "regression"]


class ModelSection(Strict):
    name: str = Field(
        description="Registered model name in the registry; versions accumulate under it.",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
    )
    description: str = Field("", description="Free text stored on the registered model.")


class DataSection(Strict):
    path: str = Field(
        description="File, directory or glob; local path or s3:// / gs:// URI; parquet or CSV."
    )
    format: Literal["auto", "parquet", "csv"] = Field(
        "auto", description="File format; 'auto' decides by the file extension."
    )
    target: str = Field(description="Column to predict.", min_length=1)
    task: Task = Field(description="binary | multiclass | regression.")
    positive_class: str | bool | int | None = Field(
        None,
        description="Binary: the target value that is the positive class (probabilities, AUC, "
        "F1, fairness and the served label are about it). Default: the one class that reads as "
        "1/true/yes/y/positive (any case), else the lexically last; the job prints which.",
    )
    categorical: list[str] | None = Field(
        None, description="Categorical feature columns; inferred from dtypes when omitted."
    )
    drop: list[str] = Field(default_factory=list, description="Columns that are not features.")
    time_column: str | None = Field(
        None, description="Split by time (latest rows held out) instead of at random."
    )
    holdout: float = Field(0.2, gt=0.0, lt=0.9, description="Fraction held out for evaluation.")
    seed: int = Field(0, description="Seed of the random split and of sampling.")
    max_categories: PositiveInt = Field(
        200, description="Most frequent categories kept per feature; rarer ones count as unseen."
    )
    ray_datasource_v2: bool = Field(
        False,
        description="Use Ray Data's V2 file datasource. Off by default: in Ray 2.60 its parquet "
        "reader starts footer-reading actors on every read (seconds of fixed cost per read).",
    )
    fingerprint: Literal["content", "metadata"] = Field(
        "content", description="Hash file contents (exact) or only names, sizes and mtimes (fast)."
    )

    @model_validator(mode="after")
    def _no_overlap(self) -> DataSection:
        if self.positive_class is not None and self.task != "binary":
            raise ValueError(f"data.positive_class applies to task binary, not {self.task}")
        cats = set(self.categorical or [])
        for col in [self.target, *([self.time_column] if self.time_column else [])]:
            if col in cats or col in self.drop:
                raise ValueError(
                    f"column {col!r} is the target or time column and cannot also be listed "
                    "in data.categorical or data.drop"
                )
        both = cats & set(self.drop)
        if both:
            raise ValueError(f"columns {sorted(both)} are in both data.categorical and data.drop")
        return self


# Booster parameters Shipyard derives from the task and resources; configs may not set them.
OWNED_PARAMS = frozenset({"objective", "num_class", "device", "nthread", "eval_metric"})


class TrainSection(Strict):
    num_workers: NonNegativeInt = Field(
        2,
        description=(
            "Ray Train workers for XGBoost. 0 trains in the job's own process (Ray Train's local "
            "mode): no worker group to start, which on a small table is most of the run, but no "
            "checkpoints and nothing to resume after a loss, on the node the job runs on."
        ),
    )
    cpus_per_worker: PositiveFloat = Field(1.0, description="CPUs reserved per training worker.")
    use_gpu: bool = Field(
        False, description="Train on GPUs (device=cuda) where the cluster has them."
    )
    num_boost_round: PositiveInt = Field(300, description="Upper bound on boosting rounds.")
    early_stopping_rounds: PositiveInt = Field(
        20, description="Stop when the validation metric has not improved for this many rounds."
    )
    checkpoint_every: PositiveInt = Field(10, description="Checkpoint every K boosting rounds.")
    max_failures: int = Field(
        3, ge=-1, description="Worker failures tolerated before the run fails (-1: unlimited)."
    )
    storage_path: str | None = Field(
        None, description="Checkpoint storage (local dir or s3:// / gs://); default under state."
    )
    params: dict[str, Any] = Field(
        default_factory=lambda: {"max_depth": 6, "eta": 0.1, "subsample": 0.9},
        description="XGBoost booster parameters; objective and eval metric follow data.task.",
    )

    @field_validator("params")
    @classmethod
    def _params_are_ours(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = OWNED_PARAMS & set(v)
        if owned:
            raise ValueError(
                f"train.params may not set {sorted(owned)}: Shipyard derives them from "
                "data.task, train.use_gpu and train.cpus_per_worker"
            )
        return v


class GatesSection(Strict):
    baseline_margin: float = Field(
        0.0,
        description="The primary metric must beat the baseline's by at least this much "
        "(AUC for binary, macro-F1 for multiclass, RMSE for regression, in the metric's units).",
    )
    champion_margin: float | None = Field(
        None,
        description="If set, the candidate must also beat the current champion on this "
        "run's holdout by this margin; otherwise the comparison is only reported.",
    )
    max_slice_gap: NonNegativeFloat = Field(
        0.15,
        description="A slice fails when its primary metric trails the overall by more than "
        "this with confidence (AUC or macro-F1 points; regression: a fraction of the RMSE the "
        "model's error curve expects on the slice's rows, 0.15 = 15% worse).",
    )
    slice_alpha: float = Field(
        0.05, gt=0, lt=1, description="Error rate of the slice gate (family-wise, see below)."
    )
    slice_correction: Literal["holm", "bonferroni", "none"] = Field(
        "holm", description="Multiple-testing correction over the family of slices."
    )
    min_slice_rows: PositiveInt = Field(
        30,
        description="Categorical values with fewer rows are pooled into one slice; smaller "
        "slices are reported with their intervals but not tested.",
    )
    slice_bins: int = Field(
        4, ge=0, description="Quantile bins per numeric feature (0: no numeric slices)."
    )
    slice_columns: list[str] | None = Field(
        None,
        description="Columns to slice by, features or not; default: every feature and the "
        "fairness.sensitive columns.",
    )
    latency_budget_ms: PositiveFloat = Field(
        5.0, description="ONNX single-row p50 latency budget, milliseconds."
    )
    parity_tolerance: PositiveFloat = Field(
        1e-5,
        description="Max |ONNX - native| on the holdout (probabilities; regression relative "
        "to max(1, |prediction|)).",
    )


class FairnessSection(Strict):
    sensitive: list[str] = Field(
        default_factory=list,
        description="Columns naming groups to compare (binary tasks). Carried through the split "
        "for evaluation; one that is also in data.drop is never fed to the model.",
    )
    max_demographic_parity_difference: NonNegativeFloat | None = Field(
        None, description="Gate: largest selection-rate difference between groups (off if unset)."
    )
    max_equalized_odds_difference: NonNegativeFloat | None = Field(
        None, description="Gate: largest TPR or FPR difference between groups (off if unset)."
    )
    threshold: float = Field(
        0.5, gt=0, lt=1, description="Decision threshold on P(positive) for the group rates."
    )
    min_group_rows: PositiveInt = Field(
        30, description="Groups with fewer holdout rows are reported but left out of the gaps."
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Error rate of the fairness gates (Holm over the gaps)."
    )


class TrackingSection(Strict):
    experiment: str | None = Field(
        None, description="MLflow experiment; default 'shipyard/<model.name>'."
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; MLFLOW_TRACKING_URI wins, default a SQLite store "
        "under SHIPYARD_HOME.",
    )


class EventsSection(Strict):
    webhook_url: str | None = Field(
        None, description="POST each event as JSON here (also SHIPYARD_WEBHOOK_URL)."
    )


class TrainJobConfig(Strict):
    """Config of `python -m jobs.train`."""

    model: ModelSection
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    gates: GatesSection = Field(default_factory=GatesSection)
    fairness: FairnessSection = Field(default_factory=FairnessSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    events: EventsSection = Field(default_factory=EventsSection)

    @model_validator(mode="after")
    def _groups_need_a_binary_task(self) -> TrainJobConfig:
        if self.fairness.sensitive and self.data.task != "binary":
            raise ValueError(
                f"fairness.sensitive: group rates (selection, TPR, FPR) need data.task: binary, "
                f"not {self.data.task!r}; slice by these columns with gates.slice_columns instead"
            )
        if self.data.target in self.fairness.sensitive:
            raise ValueError(f"fairness.sensitive: {self.data.target!r} is the target")
        return self


class SearchParam(Strict):
    """One dimension of the search space: `{type: loguniform, low: 0.01, high: 0.3}`."""

    type: Literal["uniform", "loguniform", "int", "choice"] = Field(
        description="uniform | loguniform | int (inclusive) | choice."
    )
    low: float | None = Field(None, description="Lower bound (uniform, loguniform, int).")
    high: float | None = Field(None, description="Upper bound (uniform, loguniform, int).")
    values: list[Any] | None = Field(None, description="The options of a `choice`.")

    @model_validator(mode="after")
    def _bounds(self) -> SearchParam:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty `values` list")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(
                f"a {self.type} parameter needs low < high (got {self.low}, {self.high})"
            )
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform parameter needs low > 0 (got {self.low})")
        return self


class TuneSection(Strict):
    num_samples: PositiveInt = Field(16, description="Trials (configurations) to run.")
    searcher: Literal["random", "optuna"] = Field(
        "random", description="random, or optuna (TPE, model-based: proposes from past trials)."
    )
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha stops poor trials early at rungs; fifo runs every trial out."
    )
    max_rounds: PositiveInt = Field(200, description="Boosting rounds of a trial run to the end.")
    early_stopping: bool = Field(
        False,
        description="Also stop a trial when its validation metric has not improved for "
        "train.early_stopping_rounds (as training does); off: the scheduler stops trials.",
    )
    grace_period: PositiveInt = Field(
        30,
        description="ASHA: rounds before a trial can be stopped (10 stopped slow-learning, "
        "small-eta configurations too early in the benchmark).",
    )
    reduction_factor: float = Field(3.0, gt=1, description="ASHA: keep 1/this at every rung.")
    report_every: PositiveInt = Field(5, description="Report the metric every K rounds.")
    checkpoint_every: PositiveInt = Field(10, description="Checkpoint a trial every K rounds.")
    cpus_per_trial: PositiveFloat = Field(1.0, description="CPUs reserved per trial.")
    gpus_per_trial: NonNegativeFloat = Field(0.0, description="GPUs per trial (device=cuda if >0).")
    max_concurrent_trials: PositiveInt | None = Field(
        None, description="Cap on trials at once; default what the resources allow."
    )
    max_failures: int = Field(
        3,
        ge=-1,
        description="Retries of a trial after a worker or node loss (from its checkpoint).",
    )
    seed: int = Field(0, description="Seed of the searcher.")
    storage_path: str | None = Field(
        None, description="Experiment storage (local dir or s3:// / gs://); default under state."
    )
    name: str | None = Field(None, description="Study name; default '<model.name>-tune'.")
    train_best: bool = Field(
        True, description="Train and register the best trial's config through jobs.train's path."
    )
    space: dict[str, SearchParam] = Field(
        default_factory=lambda: {
            "eta": SearchParam(type="loguniform", low=0.02, high=0.3),
            "max_depth": SearchParam(type="int", low=3, high=8),
            "min_child_weight": SearchParam(type="loguniform", low=0.5, high=20),
            "subsample": SearchParam(type="uniform", low=0.6, high=1.0),
            "colsample_bytree": SearchParam(type="uniform", low=0.6, high=1.0),
        },
        description="XGBoost parameters to search: name -> {type, low, high | values}.",
    )

    @field_validator("space")
    @classmethod
    def _space_params(cls, v: dict[str, SearchParam]) -> dict[str, SearchParam]:
        owned = OWNED_PARAMS & set(v)
        if owned:
            raise ValueError(f"tune.space may not search {sorted(owned)}: Shipyard sets them")
        if not v:
            raise ValueError("tune.space is empty: name at least one parameter to search")
        return v


class TuneJobConfig(TrainJobConfig):
    """Config of `python -m jobs.tune`: a training config plus a `tune` section."""

    tune: TuneSection = Field(default_factory=TuneSection)

    def train_config(self, params: dict[str, Any] | None = None) -> TrainJobConfig:
        """The training config within (the sections of its own left out), with `params` set."""
        own = set(type(self).model_fields) - set(TrainJobConfig.model_fields)
        raw = self.model_dump(mode="json", exclude=own)
        raw["train"]["params"] = {**raw["train"]["params"], **(params or {})}
        return TrainJobConfig.model_validate(raw)


class CurveSection(Strict):
    """`python -m jobs.learning_curve`: nested fractions of the training split, one fit each."""

    fractions: list[float] = Field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.7, 1.0],
        min_length=1,
        description="Fractions of the training split to fit on, each in (0, 1] (--fractions).",
    )
    repeats: PositiveInt = Field(
        2, description="Fits per fraction, each on another sample (--repeats)."
    )
    min_gain: PositiveFloat = Field(
        0.002,
        description="A doubling of the data that adds less than this to the primary metric "
        "stops paying (--min-gain).",
    )
    cpus_per_fit: PositiveFloat = Field(
        1.0, description="CPUs reserved per fit: one Ray task each (--cpus-per-fit)."
    )

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        outside = [f for f in v if not 0.0 < f <= 1.0]
        if outside:
            raise ValueError(f"each fraction must be in (0, 1]; got {outside}")
        return v


class CurveJobConfig(TuneJobConfig):
    """Config of `python -m jobs.learning_curve`: a training config plus a `curve` section (a
    `tune` section, if the file has one, is read and not used)."""

    curve: CurveSection = Field(default_factory=CurveSection)


def load_train_config(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> TrainJobConfig:
    """Load and validate a training config; overrides are dotted keys (`train.num_workers`)."""
    cfg: TrainJobConfig = load_config(path, TrainJobConfig, overrides)
    return cfg


def load_tune_config(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> TuneJobConfig:
    cfg: TuneJobConfig = load_config(path, TuneJobConfig, overrides)
    return cfg


def load_curve_config(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> CurveJobConfig:
    cfg: CurveJobConfig = load_config(path, CurveJobConfig, overrides)
    return cfg


def reference_markdown(model: type[BaseModel] = TrainJobConfig, prefix: str = "") -> str:
    """A config reference table for docs/, generated from the models' field descriptions."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(m: type[BaseModel], prefix: str) -> None:
        for name, field in m.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            args = getattr(ann, "__args__", ())
            if (
                getattr(ann, "__origin__", None) is list
                and args
                and isinstance(args[0], type)
                and issubclass(args[0], BaseModel)
            ):
                walk(args[0], f"{prefix}{name}[].")  # a list of sections: document the item
                continue
            if field.is_required():
                default = "required"
            elif field.default_factory is not None:
                value = field.default_factory()  # type: ignore[call-arg]
                if isinstance(value, dict) and any(
                    isinstance(v, BaseModel) for v in value.values()
                ):
                    value = {k: v.model_dump(exclude_none=True) for k, v in value.items()}
                default = f"`{value}`"
            else:
                default = f"`{field.default}`"
            typ = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "")
            cells = [f"`{prefix}{name}`", typ, default, field.description or ""]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")

    walk(model, prefix)
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_markdown())
