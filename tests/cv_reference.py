"""Fold numbers of the reference engine for fixed specs, recorded before the estimators moved to
`gencv.engines.sklearn_api`; `test_cv.py` holds the current code to them exactly.

Regenerate (only when a change of numbers is intended): `python -m tests.cv_reference`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = Path(__file__).parent / "data" / "cv_reference.json"

#: case name -> (spec path, overrides)
CASES: dict[str, list[str]] = {
    "quickstart": ["cv.n_splits=3", "train.max_epochs=20"],
    "regression": ["cv.n_splits=3", "cv.kind=kfold", "train.max_epochs=10", "data.source=diabetes", "metric=rmse"],
    "time_series": ["cv.n_splits=3", "cv.kind=rolling", "train.max_epochs=6", "data.source=synthetic_timeseries",
                    "metric=rmse", "model.hidden=[16]", "train.schedule=step"],
}


def fold_numbers(overrides: list[str]) -> list[dict[str, Any]]:
    """Every fold's scores, losses, epochs and learning curve for the quickstart spec with `overrides`."""
    from gencv.cv import cross_validate
    from gencv.runner import prepare
    from gencv.spec import load_experiment

    path = Path(__file__).resolve().parents[1] / "gencv" / "experiments" / "quickstart.yaml"
    exp = load_experiment(path, overrides)
    prep = prepare(exp)
    ds = prep.dataset
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric=exp.metric, seed=exp.seed,
                         X_test=prep.X_test, y_test=prep.y_test, groups=ds.groups)
    out = []
    for f in res.folds:
        out.append({
            "index": f.index, "status": f.status, "epochs_run": f.epochs_run, "best_epoch": f.best_epoch,
            "n_fit": f.n_fit, "train_scores": f.train_scores, "es_scores": f.es_scores,
            "valid_scores": f.valid_scores, "test_scores": f.test_scores, "train_loss": f.train_loss,
            "es_loss": f.es_loss, "valid_loss": f.valid_loss, "test_loss": f.test_loss,
            "history": [{k: v for k, v in row.items() if k != "seconds"} for row in f.history],
        })
    return json.loads(json.dumps(out, default=_plain))  # the JSON round trip the stored file went through


def _plain(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    REFERENCE.write_text(json.dumps({name: fold_numbers(ov) for name, ov in CASES.items()}, indent=1,
                                    default=_plain) + "\n")
    print(f"wrote {REFERENCE}")
