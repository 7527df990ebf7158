from __future__ import annotations

from gencv.runner import run_experiment

from .conftest import tiny


def test_measure_notes_reach_the_outcome_once_per_distinct_note() -> None:
    # A sample size above the training fold: every fold uses its whole fold and says so.
    exp = tiny(**{"measures": ["norms"], "measure_options": {"sample_size": 10_000}, "train.max_epochs": 2})
    out = run_experiment(exp, refit=False)
    notes = [n for n in out.notes if n.startswith("measures")]
    assert len(notes) == 1 and notes[0].startswith("measures, folds 0, 1, 2:"), out.notes
    assert "10000" in notes[0]
    assert all(f.measure_notes for f in out.cv.folds)


def test_rolling_cv_on_data_that_is_no_time_series_warns_in_the_output() -> None:
    """iris sorted by class under rolling CV once gave a refit test accuracy of 0.0 without a word."""
    exp = tiny(**{"cv.kind": "rolling", "cv.n_splits": 3, "train.max_epochs": 2})
    out = run_experiment(exp, refit=False)
    warned = [n for n in out.notes if "not a time series" in n]
    assert len(warned) == 1 and "cv.kind=rolling" in warned[0] and "data.time" in warned[0]
    assert not [n for n in run_experiment(tiny(**{"train.max_epochs": 2}), refit=False).notes
                if "time series" in n]
