"""Shared fixtures: fixed seeds, tiny experiments, a temporary MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gencv.spec import Experiment, validate_experiment

from .pg import pg_url  # noqa: F401  (session fixture: one PostgreSQL server for the whole run)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeds() -> None:
    np.random.seed(0)
    torch.manual_seed(0)


def tiny(**overrides: object) -> Experiment:
    """A fast experiment: iris, one small hidden layer, few epochs, 3 folds."""
    raw = {
        "name": "tiny",
        "seed": 0,
        "data": {"source": "iris", "test_size": 0.2},
        "model": {"hidden": [8], "dropout": 0.0},
        "train": {"lr": 0.02, "max_epochs": 4, "batch_size": 32,
                  "early_stopping": {"patience": 3, "valid_fraction": 0.2}},
        "cv": {"kind": "stratified", "n_splits": 3},
        "metric": "accuracy",
    }
    exp = validate_experiment(raw)
    return exp.with_overrides(overrides) if overrides else exp


@pytest.fixture
def tiny_exp() -> Experiment:
    return tiny()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"
