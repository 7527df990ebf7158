"""The spec of a transferred network: `model.base` (which trained gencv network to start from, what to freeze,
the new head); and the spec keys added over time, dropped from digests when unset so earlier specs keep theirs."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BaseSpec", "drop_unset_custom_keys", "drop_unset_transfer_keys"]

_URI = re.compile(r"models:/([^/@]+)(?:/(\d+|latest)|@(\w[\w-]*))")


class BaseSpec(BaseModel):
    """`model.base`: a trained gencv network whose weights start the new one (all but its output layer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str | None = None  # a `gencv run` parent run id: its refit model's logged state dict
    uri: str | None = None  # models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS (`gencv run --register`)
    path: str | None = None  # a state-dict file: torch.save(module.state_dict()), a run's model_weights/state_dict.pt
    sha256: str | None = None  # path: the file's expected SHA-256 (run/uri: checked against the run's tag)
    # all_but_head: only the new head trains; none: everything trains; [names]: those layers (and below) stay fixed
    freeze: Literal["all_but_head", "none"] | list[str] = "all_but_head"
    new_head: list[int] = Field(default_factory=list)  # hidden sizes of the new head; []: one linear layer
    head: str | None = None  # the output layer's attribute (e.g. fc, classifier.2); None: the last nn.Linear

    @field_validator("new_head")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(int(h) < 1 for h in v):
            raise ValueError(f"model.base.new_head: got {v}; give positive hidden sizes, e.g. [32] ([]: one layer)")
        return v

    @field_validator("freeze")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("model.base.freeze: got []; use none (train every layer), all_but_head, or layer names")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> BaseSpec:
        given = [k for k in ("run", "uri", "path") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"model.base: got {', '.join(given) or 'no source'}; give exactly one of run: RUN_ID, "
                             "uri: models:/NAME/VERSION or path: FILE")
        if self.uri is not None and not _URI.fullmatch(self.uri):
            raise ValueError(f"model.base.uri: got {self.uri!r}; use models:/NAME/VERSION, models:/NAME/latest or "
                             "models:/NAME@ALIAS (a model registered by gencv run --register NAME)")
        if self.sha256 is not None and (self.path is None or not re.fullmatch(r"[0-9a-f]{64}", self.sha256)):
            raise ValueError(f"model.base.sha256: got {self.sha256!r}; give the 64 hex digits of the file's SHA-256, "
                             "with path: (a run's weights are checked against the SHA-256 it logged)")
        return self

    @property
    def source(self) -> str:
        """What the base was read from: the run id, the models:/ URI or the file."""
        return str(self.run or self.uri or self.path)


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version or "latest" or None, alias or None) of a models:/ URI."""
    m = _URI.fullmatch(uri)
    if m is None:
        raise ValueError(f"not a models:/ URI: {uri!r}")
    return m.group(1), m.group(2), m.group(3)


#: keys added by transfer learning and their unset values: a spec without them digests as before
_UNSET = {("model", "base"): None, ("train", "base_lr_factor"): 1.0, ("data", "classes"): None}


def drop_unset_transfer_keys(raw: dict[str, Any]) -> None:
    """Remove model.base, train.base_lr_factor and data.classes from a dumped spec when unset (in place)."""
    for (section, key), unset in _UNSET.items():
        part = raw.get(section)
        if isinstance(part, dict) and key in part and part[key] == unset:
            part.pop(key)


def drop_unset_custom_keys(raw: dict[str, Any]) -> None:
    """Remove model.module, model.kwargs, data.augment and the transfer keys when unset, and tune.batch_trials and
    tune.population_pruning at their defaults, from a dumped spec (in place): digests stay as before these keys
    existed."""
    if isinstance(raw.get("data"), dict) and raw["data"].get("augment", 0) is None:
        raw["data"].pop("augment")
    model = raw.get("model")
    if isinstance(model, dict) and model.get("module") is None and not model.get("kwargs"):
        model.pop("module", None)
        model.pop("kwargs", None)
    drop_unset_transfer_keys(raw)
    tune = raw.get("tune")
    if isinstance(tune, dict) and tune.get("batch_trials", 1) == 1:
        tune.pop("batch_trials", None)
    if isinstance(tune, dict) and tune.get("population_pruning", "none") == "none":
        tune.pop("population_pruning", None)
