"""What a prune run keeps so an interrupted sweep resumes: each fold's trained network, each step's result.

Artifacts of the prune run: `trained/fold-I.pt` (the fitted estimator, saved before any pruning, so a
resumed sweep does not retrain it) and `steps/LABEL@LEVEL/fold-I.json` (the scored fold and its
pruning facts, saved as each (fold, method, level) step ends).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gencv.cv import FoldResult
from gencv.errors import GencvError
from gencv.tracking import MlflowTracker, NullTracker, Tracker

__all__ = ["PruneStore", "step_key"]


def step_key(label: str, level: float) -> str:
    return f"{label}@{level:g}"


class PruneStore:
    """Saves to, and reads back from, one prune run's artifacts (nothing with a NullTracker)."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self.active = not isinstance(tracker, NullTracker)

    def save_trained(self, fold: int, estimator: Any) -> None:
        if not self.active:
            return
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"fold-{fold}.pt"
            torch.save(estimator, path)
            self.tracker.log_artifact(self.run_id, path, "trained")

    def save_step(self, label: str, level: float, res: FoldResult, facts: dict[str, float]) -> None:
        if self.active:
            self.tracker.log_text(self.run_id, json.dumps({"result": res.to_json(), "facts": facts}),
                                  f"steps/{step_key(label, level)}/fold-{res.index}.json")

    @staticmethod
    def check(tracker: Tracker, run_id: str, digest: str | None = None,
              settings: Mapping[str, str] | None = None, spec: Mapping[str, str] | None = None) -> Any:
        """The prune run to resume, or a GencvError saying what to pass.

        digest : today's spec digest; refused when the run's `gencv.spec_digest` differs (the differing
            spec keys are named, from `spec`, today's flat params, against the run's params).
        settings : today's `prune.*` params (methods, levels, fine-tuning epochs, rounds, rewind, probes);
            refused when any differs from the run's.
        """
        if not isinstance(tracker, MlflowTracker):
            raise GencvError("--resume needs tracking on (it reads the trained folds and finished steps from MLflow)")
        try:
            run = tracker.client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001  (MLflow raises several kinds for a missing or malformed id)
            raise GencvError(f"--resume: run {run_id!r} not found ({str(exc).splitlines()[0]}); pass the prune run id "
                             "printed by `gencv prune`") from None
        if run.data.tags.get("gencv.kind") != "prune":
            raise GencvError(f"--resume: run {run_id} is not a prune run; pass the id `gencv prune` printed")
        diffs = _differences(run, digest, settings or {}, spec or {})
        if diffs:
            shown = "; ".join(diffs[:10]) + (f"; and {len(diffs) - 10} more" if len(diffs) > 10 else "")
            raise GencvError(f"--resume {run_id}: that prune run was made with other settings: {shown}. Resume with "
                             "the run's spec and options (the command Ctrl-C printed), or start a new sweep without "
                             "--resume")
        return run

    def load(self) -> tuple[dict[int, Any], dict[tuple[str, str, int], tuple[FoldResult, dict[str, float]]]]:
        """(fold -> trained estimator, (label, level key, fold) -> (scored fold, facts)) already saved."""
        import torch

        client = self.tracker.client  # type: ignore[attr-defined]
        trained: dict[int, Any] = {}
        steps: dict[tuple[str, str, int], tuple[FoldResult, dict[str, float]]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for a in client.list_artifacts(self.run_id, "trained"):
                fold = int(Path(a.path).stem.removeprefix("fold-"))
                local = client.download_artifacts(self.run_id, a.path, tmp)
                trained[fold] = torch.load(local, weights_only=False)  # our own run's pickled estimator
            for d in client.list_artifacts(self.run_id, "steps"):
                label, _, level = Path(d.path).name.rpartition("@")
                for a in client.list_artifacts(self.run_id, d.path):
                    raw = json.loads(Path(client.download_artifacts(self.run_id, a.path, tmp)).read_text())
                    res = FoldResult.from_json(raw["result"])
                    steps[(label, level, res.index)] = (res, raw["facts"])
        return trained, steps


_OPTIONS = {"prune.methods": "--method", "prune.levels": "--levels", "prune.finetune_epochs": "--finetune-epochs",
            "prune.iterative": "--iterative", "prune.rewind": "--rewind", "prune.hessian_probes": "--hessian-probes"}


def _differences(run: Any, digest: str | None, settings: Mapping[str, str], spec: Mapping[str, str]) -> list[str]:
    """What differs between the run to resume and today's spec and sweep options, one line each."""
    params = run.data.params
    diffs = [f"{_OPTIONS.get(k, k)}: the run has {params.get(k, '(not set)')}, now {v}"
             for k, v in settings.items() if params.get(k) != v]
    if digest is not None and run.data.tags.get("gencv.spec_digest") != digest:
        keys = [k for k in spec if params.get(k) != spec[k] and not k.startswith("tracking.")]
        keys += [k for k in params if k not in spec and not k.startswith(("prune.", "tracking."))]
        diffs += [f"{k}: the run has {params.get(k, '(not set)')}, this spec {spec.get(k, '(not set)')}"
                  for k in keys] or ["the spec (digests differ)"]
    return diffs
