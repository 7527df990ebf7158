"""Search space: spec `tune.space` -> checked dimensions -> Optuna suggestions -> spec overrides."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gencv.errors import SpecError
from gencv.spec import Distribution, Experiment

__all__ = ["Dimension", "build_space", "grid_search_space", "overrides_from_params", "suggest"]

# Paths a trial may not change: they define the data, the folds, the score or the study itself,
# so trials that changed them would not be comparable.
_FROZEN_PREFIXES = ("data.", "cv.", "tune.")
_FROZEN_EXACT = ("name", "seed", "metric", "measures", "measure_options", "data", "cv", "tune")
_ALLOWED_DATA = ("data.scale",)
_PRIMITIVE = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Dimension:
    """One checked search dimension, addressed by its dotted spec path."""

    path: str
    kind: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    encoded: bool = False  # categorical choices stored as JSON strings (lists, mappings)

    def optuna_choices(self) -> tuple[Any, ...]:
        """Choices as Optuna stores them (JSON text for non-scalar choices)."""
        return tuple(json.dumps(c) for c in self.choices) if self.encoded else self.choices

    def decode(self, value: Any) -> Any:
        """Optuna's value -> the value set in the spec."""
        if self.kind == "categorical":
            return json.loads(value) if self.encoded else value
        if self.kind == "int":
            return int(value)
        return float(value)


def _current(raw: Mapping[str, Any], path: str) -> Any:
    node: Any = raw
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def build_space(exp: Experiment) -> list[Dimension]:
    """Check `exp.tune.space` and return its dimensions; raise SpecError before any training.

    Every dimension's bounds (or every choice) are applied to the spec once with
    `Experiment.with_overrides`, so a wrong path or a value the field refuses is reported now,
    named by its field, rather than in the middle of trial 17.
    """
    if exp.tune is None:
        raise SpecError("tune: the spec has no tune section; add tune: {space: {train.lr: {low: 1e-4, high: 1e-1, "
                        "log: true}}} or pass --set tune.trials=20 with a space")
    if not exp.tune.space:
        raise SpecError("tune.space: empty; declare at least one dimension, e.g. "
                        "tune: {space: {train.lr: {low: 1.0e-4, high: 1.0e-1, log: true}}}")
    raw = exp.model_dump(mode="json")
    dims = [_dimension(exp, raw, path, dist) for path, dist in exp.tune.space.items()]
    if exp.tune.sampler == "grid":
        grid_search_space(dims)  # raises if a dimension cannot be enumerated
    return dims


def _dimension(exp: Experiment, raw: Mapping[str, Any], path: str, dist: Distribution) -> Dimension:
    field = f"tune.space.{path}"
    if path in _FROZEN_EXACT or (path.startswith(_FROZEN_PREFIXES) and path not in _ALLOWED_DATA):
        raise SpecError(f"{field}: {path!r} cannot be tuned: it changes the data, the folds, the metric or the study, "
                        "so trials would not be comparable; tune model.*, train.* or data.scale instead")
    current = _current(raw, path)
    if dist.choices is not None:
        choices = tuple(dist.choices)
        encoded = any(not isinstance(c, _PRIMITIVE) for c in choices)
        if len({json.dumps(c, sort_keys=True) for c in choices}) != len(choices):
            raise SpecError(f"{field}.choices: got {list(choices)!r}: duplicate choices; list each value once")
        dim = Dimension(path, "categorical", choices=choices, encoded=encoded)
        probes = list(choices)
    else:
        assert dist.low is not None and dist.high is not None  # guaranteed by Distribution
        kind = dist.type or ("int" if isinstance(current, int) and not isinstance(current, bool) else "float")
        low, high, step = dist.low, dist.high, dist.step
        if dist.log and step is not None:
            raise SpecError(f"{field}: log=true and step={step} cannot be combined (Optuna refuses it); drop one")
        if step is not None and step <= 0:
            raise SpecError(f"{field}.step: got {step}: must be > 0")
        if kind == "int":
            if not (float(low).is_integer() and float(high).is_integer()):
                raise SpecError(f"{field}: type int needs whole-number bounds, got low={low}, high={high}")
            if step is not None and not float(step).is_integer():
                raise SpecError(f"{field}.step: got {step}: an int dimension needs a whole-number step")
            low, high = float(int(low)), float(int(high))
        if step is not None and (high - low) / step < 0.999999 and high != low:
            raise SpecError(f"{field}.step: got {step}, larger than high - low = {high - low}; use a smaller step")
        dim = Dimension(path, kind, low=low, high=high, log=dist.log, step=step)
        probes = [dim.decode(low), dim.decode(high)]
    for value in probes:
        try:
            exp.with_overrides({path: value})
        except SpecError as exc:
            detail = str(exc).split("\n", 1)[-1].strip()
            raise SpecError(f"{field}: the value {value!r} is not valid for {path}: {detail}") from None
    return dim


def suggest(trial: Any, dims: list[Dimension]) -> dict[str, Any]:
    """Ask the trial for one value per dimension; return spec overrides {path: value}."""
    out: dict[str, Any] = {}
    for d in dims:
        if d.kind == "categorical":
            v = trial.suggest_categorical(d.path, list(d.optuna_choices()))
        elif d.kind == "int":
            v = trial.suggest_int(d.path, int(d.low or 0), int(d.high or 0), step=int(d.step or 1), log=d.log)
        else:
            v = trial.suggest_float(d.path, float(d.low or 0.0), float(d.high or 0.0), step=d.step, log=d.log)
        out[d.path] = d.decode(v)
    return out


def overrides_from_params(params: Mapping[str, Any], dims: list[Dimension]) -> dict[str, Any]:
    """A trial's stored params -> spec overrides (decoding JSON-encoded categorical choices)."""
    by_path = {d.path: d for d in dims}
    return {k: (by_path[k].decode(v) if k in by_path else v) for k, v in params.items()}


def grid_search_space(dims: list[Dimension]) -> dict[str, list[Any]]:
    """GridSampler's search space; every dimension needs choices or a step."""
    out: dict[str, list[Any]] = {}
    for d in dims:
        if d.kind == "categorical":
            out[d.path] = list(d.optuna_choices())
            continue
        if d.step is None and d.kind == "float":
            raise SpecError(f"tune.space.{d.path}: tune.sampler=grid needs choices: [...] or a step for a float range "
                            f"(got low={d.low}, high={d.high}); add step: ... or use sampler: tpe")
        step = d.step or 1.0
        n = int(math.floor((float(d.high or 0) - float(d.low or 0)) / step + 1e-9)) + 1
        values = [float(d.low or 0) + i * step for i in range(n)]
        out[d.path] = [int(round(v)) for v in values] if d.kind == "int" else [float(np.round(v, 12)) for v in values]
    return out
