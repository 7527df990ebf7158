"""Experiment spec: load YAML, apply dotted overrides, validate into a frozen model."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from gencv.errors import SpecError, did_you_mean
from gencv.modref import module_ref_problem, module_relative_to
from gencv.spec_transfer import BaseSpec, drop_unset_custom_keys

__all__ = [
    "AugmentSpec",
    "CVSpec",
    "DataSpec",
    "Distribution",
    "EarlyStoppingSpec",
    "Experiment",
    "ModelSpec",
    "ScheduleSpec",
    "TrainSpec",
    "TuneSpec",
    "apply_overrides",
    "drop_unset_custom_keys",
    "load_experiment",
    "parse_overrides",
    "validate_experiment",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AugmentSpec(_Strict):
    """Data augmentation of training batches only (`gencv.augment`); all zero: off.

    Images: `shift` (pixels), `rotate` (degrees), `scale` (relative zoom), `cutout` (side of a zeroed square,
    pixels). Images and tables: `noise` (std in the network's input units, standardized with data.scale:
    standard), `mixup` (Beta(alpha, alpha) mixing of row pairs and their targets). `p`: chance that a row
    gets the shift/rotate/scale/cutout/noise draws.
    """

    shift: int = Field(0, ge=0, le=1024)
    rotate: float = Field(0.0, ge=0.0, le=180.0)
    scale: float = Field(0.0, ge=0.0, lt=1.0)
    noise: float = Field(0.0, ge=0.0, le=100.0)
    cutout: int = Field(0, ge=0, le=4096)
    mixup: float = Field(0.0, ge=0.0, le=100.0)
    p: float = Field(1.0, ge=0.0, le=1.0)

    @property
    def active(self) -> bool:
        """Whether any augmentation is on."""
        return (self.p > 0 and any((self.shift, self.rotate, self.scale, self.noise, self.cutout))) or self.mixup > 0


class DataSpec(_Strict):
    """Where the data comes from and how it is held out and scaled."""

    source: str = "iris"
    target: str | None = None
    # auto: a non-numeric or bool target, or an integer one with <= 50 distinct values, is classification
    task: Literal["auto", "classification", "regression"] = "auto"
    sep: str | None = None  # csv delimiter; None: sniffed from the file's first lines
    categorical: Literal["onehot", "ordinal"] = "onehot"  # string/category/bool feature columns, per fold
    impute: Literal["none", "mean", "median", "most_frequent"] = "none"  # missing feature values, per fold
    image_size: list[int] = Field(default_factory=lambda: [32, 32])  # images:DIR are resized to (height, width)
    group: str | None = None
    time: str | None = None
    features: list[str] | None = None
    test_size: float = Field(0.2, ge=0.0, lt=1.0)
    scale: Literal["standard", "minmax", "none"] = "standard"
    n_samples: int | None = Field(None, ge=10, le=1_000_000)
    n_features: int | None = Field(None, ge=1, le=10_000)
    n_classes: int | None = Field(None, ge=2, le=100)
    n_groups: int | None = Field(None, ge=2, le=10_000)
    noise: float | None = Field(None, ge=0.0)
    # lag windows: built-in series default to 12; a csv/parquet table becomes windows of data.target
    # (ordered by data.time) only when lags is set
    lags: int | None = Field(None, ge=1, le=1000)
    horizon: int = Field(1, ge=1, le=1000)
    # Fraction of each training fold (and of the refit's rows) that is fitted on; held-out folds are unchanged.
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    augment: AugmentSpec | None = None  # training batches only; never held-out, early-stopping or measured rows
    classes: list[int | str] | None = Field(None, min_length=2)  # keep these classes only, coded 0..k-1 in this order

    @field_validator("sep")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        v = {"tab": "\t", "\\t": "\t"}.get(v, v) if v is not None else None
        if v is not None and len(v) != 1:
            raise ValueError(f"got {v!r}; give one character, e.g. ',', ';', '|' or \"\\t\" (or tab)")
        return v

    @field_validator("image_size")
    @classmethod
    def _two_sizes(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or any(int(s) < 1 or int(s) > 4096 for s in v):
            raise ValueError(f"got {v}; give [height, width] in pixels, e.g. [32, 32]")
        return v

    @field_validator("features")
    @classmethod
    def _target_not_a_feature(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # A feature that is the target answers the question it is asked (a leaked test score). Lag
        # windows (data.lags) hold past values only and never come through this list.
        target = info.data.get("target")
        if v is not None and target is not None and target in v:
            rest = [c for c in v if c != target]
            raise ValueError(
                f"lists the target column {target!r} (data.target) as a feature, which leaks the answer "
                f"into the inputs; remove {target!r} from data.features"
                + (f", e.g. data.features={rest}" if rest else "")
            )
        return v


class ModelSpec(_Strict):
    """The torch network."""

    kind: Literal["mlp", "cnn", "rnn", "custom"] = "mlp"
    # custom: "package.module:Name" (importable) or "path/to/file.py:Name" (relative to the spec file)
    module: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)  # custom: passed to the module's constructor
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    activation: Literal["relu", "tanh", "gelu", "sigmoid", "leaky_relu"] = "relu"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    batch_norm: bool = False
    init: Literal["he", "xavier", "default"] = "he"
    channels: list[int] = Field(default_factory=lambda: [16, 32])
    kernel_size: int = Field(3, ge=1, le=15)
    cell: Literal["lstm", "gru"] = "lstm"
    rnn_layers: int = Field(1, ge=1, le=8)
    base: BaseSpec | None = None  # transfer learning: start from a trained network (spec_transfer.BaseSpec)

    @field_validator("hidden", "channels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(int(h) < 1 for h in v):
            raise ValueError(f"layer sizes must be positive integers, got {v}")
        return v

    @model_validator(mode="after")
    def _custom_module(self) -> ModelSpec:
        if self.kind != "custom":
            if self.module is not None or self.kwargs:
                raise ValueError(f"model.module and model.kwargs are for model.kind=custom, but model.kind is "
                                 f"{self.kind!r}; set model.kind: custom, or remove them")
            return self
        if not self.module:
            raise ValueError("model.kind=custom needs model.module: a class or factory, e.g. "
                             "model.module: nets/resmlp.py:ResMLP (a file) or mypkg.nets:WideResNet (importable)")
        problem = module_ref_problem(self.module)
        if problem:
            raise ValueError(f"model.module: got {self.module!r}: {problem}")
        return self


class ScheduleSpec(_Strict):
    """Learning-rate schedule and its parameters."""

    kind: Literal["none", "step", "exponential", "cosine", "plateau"] = "none"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    t_max: int | None = Field(None, ge=1)
    eta_min: float = Field(0.0, ge=0.0)
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    patience: int = Field(5, ge=0)


class EarlyStoppingSpec(_Strict):
    """Early stopping on a validation split taken inside the training fold."""

    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0.0)
    valid_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    restore_best: bool = True


class TrainSpec(_Strict):
    """Training recipe."""

    optimizer: Literal[
        "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam", "lbfgs"
    ] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=1e4)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    l1: float = Field(0.0, ge=0.0)
    batch_size: int = Field(32, ge=1)
    max_epochs: int = Field(50, ge=1, le=100_000)
    schedule: ScheduleSpec = Field(default_factory=lambda: ScheduleSpec(kind="cosine"))
    clip_grad_norm: float | None = Field(None, gt=0.0)
    early_stopping: EarlyStoppingSpec | None = Field(default_factory=EarlyStoppingSpec)
    device: str = "cpu"
    engine: Literal["skorch", "batched", "auto"] = "skorch"  # auto: batched when it supports the settings
    dtype: Literal["float32", "float64"] = "float32"  # float64 for reference checks between engines
    # batched engine: most folds per stack (None: as many as fit gencv.engines.batched.MEMORY_BUDGET)
    max_members: int | None = Field(None, ge=1, le=1_000_000)
    # Train until the eval-mode data loss on the fitted rows is <= this (Jiang et al. 2019), or max_epochs.
    stop_at_train_loss: float | None = Field(None, gt=0.0)
    base_lr_factor: float = Field(1.0, gt=0.0, le=1.0)  # model.base: lr of the unfrozen base layers = lr x this

    @model_validator(mode="after")
    def _one_stopping_rule(self) -> TrainSpec:
        if self.stop_at_train_loss is not None and self.early_stopping is not None:
            raise ValueError(
                f"train.stop_at_train_loss={self.stop_at_train_loss} cannot be combined with train.early_stopping "
                "(each decides when training ends, and early stopping fits fewer rows); set "
                "train.early_stopping: null to train to the loss, or drop train.stop_at_train_loss"
            )
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", v):
            raise ValueError("use cpu, cuda, cuda:N (a GPU index) or mps")
        return v

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shorthand(cls, v: Any) -> Any:
        if v is None or isinstance(v, str):
            return {"kind": v or "none"}
        return v


class CVSpec(_Strict):
    """Cross-validation scheme."""

    kind: Literal["kfold", "stratified", "loo", "holdout", "rolling", "repeated", "group"] = "stratified"
    n_splits: int = Field(5, ge=2)
    shuffle: bool = True
    n_repeats: int = Field(3, ge=1)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    window: Literal["expanding", "sliding"] = "expanding"
    max_train_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    gap: int = Field(0, ge=0)
    leave_one_group_out: bool = False
    max_loo_samples: int = Field(300, ge=1)

    @model_validator(mode="after")
    def _sliding_needs_size(self) -> CVSpec:
        if self.kind == "rolling" and self.window == "sliding" and self.max_train_size is None:
            raise ValueError(
                "cv.window=sliding needs cv.max_train_size (the window length in samples); "
                "set it, or use window: expanding"
            )
        return self


class Distribution(_Strict):
    """One search dimension: a float/int range (optionally log) or categorical choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    type: Literal["float", "int"] | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if len(self.choices) == 0:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices: [...])")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0, got low={self.low}")
        return self


# pruner -> option -> (type, lowest, highest, default); bounds are exclusive for floats, inclusive
# for ints. Steps count folds: the median and hyperband pruners see step = folds done (1, 2, ...),
# so `n_warmup_steps: 2` means "never prune before two folds are done". Whether `min_resource`
# fits the number of folds is checked when the study opens (the fold count is known then).
PRUNER_OPTIONS: dict[str, dict[str, tuple[type, float, float, float]]] = {
    "wilcoxon": {"p_threshold": (float, 0.0, 1.0, 0.1), "n_startup_steps": (int, 0, 10**6, 2)},
    "median": {"n_startup_trials": (int, 0, 10**6, 3), "n_warmup_steps": (int, 0, 10**6, 2)},
    "hyperband": {"reduction_factor": (int, 2, 100, 3), "min_resource": (int, 1, 10**6, 1)},
    "none": {},
}


class TuneSpec(_Strict):
    """Optuna study settings and search space."""

    trials: int = Field(40, ge=1)
    timeout: float | None = Field(None, gt=0)
    sampler: Literal["tpe", "random", "gp", "cmaes", "grid"] = "tpe"
    pruner: Literal["wilcoxon", "median", "hyperband", "none"] = "wilcoxon"
    nested: bool = False
    inner_cv: CVSpec = Field(default_factory=lambda: CVSpec(kind="stratified", n_splits=3))
    space: dict[str, Distribution] = Field(default_factory=dict)
    pruner_options: dict[str, float] = Field(default_factory=dict)
    max_consecutive_failures: int = Field(10, ge=1)
    divergence: Literal["prune", "penalty"] = "prune"
    batch_trials: int = Field(1, ge=1, le=1024)  # trials asked at once and trained as one population (batched engine)
    population_pruning: Literal["none", "median"] = "none"  # median: a population's worse half stops at 1/4 of epochs

    @model_validator(mode="after")
    def _check_pruner_options(self) -> TuneSpec:
        import math

        allowed = PRUNER_OPTIONS[self.pruner]
        for key, value in self.pruner_options.items():
            if key not in allowed:
                names = ", ".join(allowed) or "none"
                raise ValueError(f"tune.pruner_options.{key} is not an option of the {self.pruner} pruner."
                                 f"{did_you_mean(key, allowed)} Options of {self.pruner}: {names}")
            kind, lo, hi, _ = allowed[key]
            span = f"between {lo} and {hi} (exclusive)" if kind is float else f"from {int(lo)} to {int(hi)}"
            if not math.isfinite(value):  # before int(): int(inf) raises OverflowError, int(nan) ValueError
                raise ValueError(f"tune.pruner_options.{key}: got {value!r}; use a finite value {span}")
            if kind is int and float(value) != int(value):
                raise ValueError(f"tune.pruner_options.{key}: got {value!r}; use a whole number {span}")
            if not (lo < value < hi if kind is float else lo <= value <= hi):
                raise ValueError(f"tune.pruner_options.{key}: got {value!r}; use a value {span}")
        return self

    def pruner_settings(self) -> dict[str, float]:
        """The pruner's options: the spec's, over gencv's defaults."""
        options = PRUNER_OPTIONS[self.pruner]
        return {k: kind(self.pruner_options.get(k, default)) for k, (kind, _, _, default) in options.items()}


class SweepSpec(_Strict):
    """`gencv sweep`: a grid of levels, each one full cross-validation on the same folds."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)  # dotted path -> its levels
    baseline: dict[str, Any] | None = None  # the level the others are compared with (default: the first)

    @field_validator("grid")
    @classmethod
    def _levels(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, levels in v.items():
            if not isinstance(levels, list) or not levels:
                raise ValueError(f"grid.{path}: got {levels!r}; give a list of levels, e.g. [0.0, 0.2, 0.5]")
            if len({json.dumps(x, sort_keys=True, default=str) for x in levels}) < len(levels):
                raise ValueError(f"grid.{path}: got {levels!r}, which repeats a level; list each level once")
        return v


class TrackingSpec(_Strict):
    """How a run is laid out in MLflow; it changes what is recorded, never a result (not in the digest)."""

    # auto: a child run per fold up to max_fold_runs folds; above it (leave-one-out's hundreds of folds)
    # the folds live in the parent run: the fold table, per-fold metrics as steps (`fold_<metric>`, step
    # = fold index), the learning curves of `curve_folds` evenly spaced folds, and the fold records in fold_results/.
    fold_runs: Literal["auto", "always", "never"] = "auto"
    max_fold_runs: int = Field(30, ge=1, le=100_000)
    curve_folds: int = Field(5, ge=0, le=1000)

    def child_runs(self, n_folds: int) -> bool:
        """Whether each of `n_folds` folds gets its own child run."""
        return self.fold_runs == "always" or (self.fold_runs == "auto" and n_folds <= self.max_fold_runs)


class Experiment(_Strict):
    """A validated experiment spec."""

    name: str = Field("quickstart", min_length=1, max_length=200)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    cv: CVSpec = Field(default_factory=CVSpec)
    metric: str = "accuracy"
    measures: list[str] = Field(default_factory=list)
    measure_options: dict[str, Any] = Field(default_factory=dict)
    tune: TuneSpec | None = None
    sweep: SweepSpec | None = None
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        from gencv.metrics import METRICS

        if v not in METRICS:
            raise ValueError(
                f"unknown metric {v!r}; allowed: {', '.join(METRICS)}.{did_you_mean(v, METRICS)}"
            )
        return v

    @field_validator("measures", mode="before")
    @classmethod
    def _measures_list(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("measures")
    @classmethod
    def _known_measures(cls, v: list[str]) -> list[str]:
        from gencv.measures.config import validate_measure_names

        return validate_measure_names(v)

    @field_validator("measure_options")
    @classmethod
    def _known_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        import dataclasses

        from gencv.measures.config import MeasureConfig

        fields = {f.name for f in dataclasses.fields(MeasureConfig)}
        for key in v:
            if key not in fields:
                raise ValueError(
                    f"unknown measure option {key!r}; allowed: {', '.join(sorted(fields))}."
                    f"{did_you_mean(key, fields)}"
                )
        try:
            MeasureConfig(**v)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return v

    def digest(self) -> str:
        """Short SHA-256 of the resolved spec (stable key order); an absent `sweep` section, and `model.module`/
        `model.kwargs` unset, leave it as it was before they existed; `tracking` is left out (it changes how
        a run is recorded, not its results)."""
        raw = self.model_dump(mode="json")
        raw.pop("tracking", None)
        if raw.get("sweep") is None:
            raw.pop("sweep", None)
        drop_unset_custom_keys(raw)
        blob = json.dumps(raw, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The resolved spec as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def flat_params(self) -> dict[str, str]:
        """Flatten to dotted keys with string values (MLflow params)."""
        return {k: _param_str(v) for k, v in _flatten(self.model_dump(mode="json")).items()}

    def with_overrides(self, overrides: Mapping[str, Any]) -> Experiment:
        """Return a new, validated Experiment with dotted-path values replaced."""
        raw = self.model_dump(mode="json")
        return validate_experiment(apply_overrides(raw, overrides), source="overrides")


def _param_str(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and k != "space":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------- loading


def load_experiment(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Experiment:
    """Read a YAML spec, apply `--set` style overrides, and validate."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file {str(p)!r} does not exist; pass a path such as experiments/quickstart.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file {str(p)!r}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: malformed YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(
            f"{p}: the spec must be a YAML mapping (name: ..., data: ..., ...), got {type(raw).__name__}"
        )
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    raw = apply_overrides(raw, overrides)
    return validate_experiment(module_relative_to(raw, p.parent), source=str(p))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ['train.lr=0.01', 'cv.kind=loo'] into a dict; values are YAML scalars or lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected PATH=VALUE, for example --set train.lr=0.01")
        key, _, value = item.partition("=")
        key = key.strip()
        if not key:
            raise SpecError(f"--set {item!r}: empty path; for example --set train.lr=0.01")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {item!r}: cannot parse value: {exc}") from None
    return out


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of raw with each dotted path set (intermediate mappings are created)."""
    data = copy.deepcopy(dict(raw))
    for path, value in overrides.items():
        parts = path.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = {}
                node[part] = nxt
            elif not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise SpecError(f"override {path!r}: {where} is {nxt!r}, not a mapping; cannot set {path}")
            node = nxt
        node[parts[-1]] = value
    return data


def validate_experiment(raw: Mapping[str, Any], source: str = "spec") -> Experiment:
    """Validate a raw mapping; raise SpecError listing every problem with path, value and fix."""
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(err, raw) for err in exc.errors()]
        n = len(lines)
        raise SpecError(f"{source}: {n} problem{'s' if n > 1 else ''} in the spec:\n" + "\n".join(lines)) from None


_MODELS: dict[str, type[BaseModel]] = {
    "": Experiment,
    "data": DataSpec,
    "data.augment": AugmentSpec,
    "model": ModelSpec,
    "model.base": BaseSpec,
    "train": TrainSpec,
    "train.schedule": ScheduleSpec,
    "train.early_stopping": EarlyStoppingSpec,
    "cv": CVSpec,
    "tune": TuneSpec,
    "tune.inner_cv": CVSpec,
}


def _format_error(err: Mapping[str, Any], raw: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if not str(p).startswith("function-")]
    path = ".".join(loc) or "(top level)"
    etype = err.get("type", "")
    value = err.get("input")
    if etype == "extra_forbidden":
        parent = ".".join(loc[:-1])
        model = _MODELS.get(parent)
        allowed = sorted(model.model_fields) if model else []
        hint = did_you_mean(loc[-1], allowed)
        return f"  - {path}: unknown key.{hint} Allowed keys{f' under {parent}' if parent else ''}: {', '.join(allowed)}"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if etype == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", ""))
        options = [s.strip().strip("'") for s in expected.replace(" or ", ",").split(",")]
        msg = f"must be one of {expected}.{did_you_mean(str(value), options)}"
    if etype == "missing":
        return f"  - {path}: required field is missing"
    shown = value if not isinstance(value, Mapping) else "{...}"
    return f"  - {path}: got {shown!r}: {msg}"

