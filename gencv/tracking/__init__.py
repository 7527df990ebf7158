"""Tracking: the Tracker protocol and null tracker (`base`), MLflow's tracker (`mlflow_tracker`), and the
writers that take MLflow's writes off the training thread (`writers`, `writer_process`).

Importing this package does not import MLflow; `MlflowTracker` imports it when constructed.
"""

from __future__ import annotations

from gencv.tracking.base import DEFAULT_TRACKING_URI, FOLD_CONTEXTS, DataRef, NullTracker, Tracker, resolve_tracking_uri
from gencv.tracking.mlflow_tracker import MlflowTracker, load_logged_model, logged_model_id, make_tracker

__all__ = [
    "DEFAULT_TRACKING_URI",
    "FOLD_CONTEXTS",
    "DataRef",
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "load_logged_model",
    "logged_model_id",
    "make_tracker",
    "resolve_tracking_uri",
]
