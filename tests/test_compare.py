"""gencv compare: paired tests between tracked runs, on the same folds only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gencv.cli import app
from gencv.runner import run_experiment
from gencv.stats import bayesian_correlated_ttest, corrected_ttest, paired_ttest
from gencv.studies.compare import ComparisonError, compare_runs, default_rope, load_run_scores
from gencv.tracking import MlflowTracker

from .conftest import tiny


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare')}/mlflow.db"
    tracker = MlflowTracker(uri)
    runs = [run_experiment(tiny(**{"model.dropout": 0.0}), tracker=tracker, refit=False),
            run_experiment(tiny(**{"model.dropout": 0.5}), tracker=tracker, refit=False),
            run_experiment(tiny(**{"seed": 1}), tracker=tracker, refit=False)]  # other seed: other folds
    tracker.close()
    return uri, runs


def test_compare_prints_both_tests_with_the_numbers_of_the_fold_scores(three_runs, tmp_path: Path) -> None:
    uri, (a, b, _) = three_runs
    res = CliRunner().invoke(app, ["compare", a.run_id, b.run_id, "--tracking-uri", uri, "--plots",
                                   str(tmp_path / "plots"), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    (pair,) = d["pairs"]
    xa = np.array([f.valid_scores["accuracy"] for f in a.cv.folds])
    xb = np.array([f.valid_scores["accuracy"] for f in b.cv.folds])
    n_train = np.mean([f.n_train for f in a.cv.folds])
    n_test = np.mean([f.n_valid for f in a.cv.folds])
    corr = corrected_ttest(xa, xb, n_train=n_train, n_test=n_test)
    bayes = bayesian_correlated_ttest(xa, xb, n_train=n_train, n_test=n_test, rope=0.01)
    assert pair["n_folds"] == 3 and pair["mean_diff"] == pytest.approx(xa.mean() - xb.mean(), abs=1e-12)
    assert pair["corrected_p"] == pytest.approx(corr.p_value, abs=1e-12)
    assert pair["corrected_p_holm"] == pytest.approx(corr.p_value, abs=1e-12)  # one pair: nothing to correct
    assert pair["plain_p"] == pytest.approx(paired_ttest(xa, xb).p_value, abs=1e-12)
    assert (pair["p_a_better"], pair["p_equivalent"], pair["p_b_better"]) == pytest.approx(
        (bayes.p_above, bayes.p_rope, bayes.p_below), abs=1e-12)
    assert d["rope"] == 0.01 and "[0, 1]" in d["rope_note"]
    (png,) = d["plots"]
    assert Path(png).stat().st_size > 10_000
    table = CliRunner().invoke(app, ["compare", a.run_id, b.run_id, "--tracking-uri", uri, "--plots",
                                     str(tmp_path / "plots")])
    assert table.exit_code == 0
    assert "p corrected" in table.stdout and "P(a better)" in table.stdout and "over-confident" in table.stdout


def test_compare_refuses_runs_on_other_folds_with_one_message(three_runs, tmp_path: Path) -> None:
    uri, (a, _, c) = three_runs
    res = CliRunner().invoke(app, ["compare", a.run_id, c.run_id, "--tracking-uri", uri, "--plots", str(tmp_path)])
    assert res.exit_code == 2 and "different folds" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["compare", a.run_id, "0" * 32, "--tracking-uri", uri, "--plots", str(tmp_path)])
    assert res.exit_code == 2 and "not found" in res.output


def test_three_runs_get_holm_corrected_pairs_and_a_ranking(three_runs) -> None:
    uri, (a, b, _) = three_runs
    client = MlflowTracker(uri, writer="inline").client
    ra, rb = load_run_scores(client, a.run_id), load_run_scores(client, b.run_id)
    shifted = type(ra)(run_id="x" * 32, label="shifted", metric="accuracy",
                       scores={k: v - 0.2 for k, v in ra.scores.items()}, n_train=ra.n_train, n_test=ra.n_test,
                       tags=dict(ra.tags), params=dict(ra.params))
    c = compare_runs([ra, rb, shifted])
    assert len(c.pairs) == 3
    raw = sorted(p.corrected_p for p in c.pairs)
    holm = sorted(p.corrected_p_holm for p in c.pairs)
    assert holm[0] == pytest.approx(min(1.0, 3 * raw[0]))  # the smallest p-value times the number of pairs
    assert all(h >= r for h, r in zip(holm, raw))
    assert c.ranking[-1][0] == "x" * 32  # 0.2 worse on every fold: last
    with pytest.raises(ComparisonError, match="--rope"):
        compare_runs([ra, rb], rope=-1.0)


def test_unbounded_metrics_get_a_rope_relative_to_the_baseline(three_runs) -> None:
    uri, (a, *_) = three_runs
    client = MlflowTracker(uri, writer="inline").client
    ra = load_run_scores(client, a.run_id, "log_loss")
    rope, note = default_rope("log_loss", ra)
    assert rope == pytest.approx(0.01 * abs(ra.mean)) and "1%" in note
