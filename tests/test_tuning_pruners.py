from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from scipy import stats

from gencv.tuning.pruners import FastWilcoxonPruner, signed_rank_pvalue


def _differences(rng: np.random.Generator, n: int) -> np.ndarray:
    """Fold-score differences as they come: accuracy steps (many ties), exact zeros, or continuous."""
    kind = rng.integers(3)
    if kind == 0:
        return rng.integers(-3, 4, n) / 45.0
    if kind == 1:
        d = rng.normal(size=n)
        d[rng.random(n) < 0.3] = 0.0
        return d
    return rng.normal(loc=rng.normal(), size=n)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 8, 10, 13, 14, 20])
def test_p_value_is_scipys(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(12 if n < 13 else 2):  # scipy's own permutation test is slow at n = 13
        d = _differences(rng, n)
        for alternative in ("less", "greater"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy: small samples, zeros, normal approximation
                ref = stats.wilcoxon(d, alternative=alternative, zero_method="zsplit").pvalue
            assert signed_rank_pvalue(d, alternative) == pytest.approx(ref, abs=1e-12), (d, alternative)


def test_p_value_by_hand() -> None:
    # 4 folds, all better for the best trial (d < 0), no ties: P(T+ <= 0) = 1 / 2**4
    assert signed_rank_pvalue(np.array([-0.1, -0.2, -0.3, -0.4]), "less") == 1 / 16
    assert signed_rank_pvalue(np.array([-0.1, -0.2, -0.3, -0.4]), "greater") == 1.0
    with pytest.raises(ValueError, match="alternative"):
        signed_rank_pvalue(np.array([1.0, 2.0]), "two-sided")


def _trial(values: dict[int, float], number: int) -> optuna.trial.FrozenTrial:
    t = create_trial(state=TrialState.COMPLETE, value=float(np.mean(list(values.values()))),
                     intermediate_values=values)
    t.number = number
    return t


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_decisions_are_optunas(direction: str) -> None:
    rng = np.random.default_rng(0 if direction == "maximize" else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-class warning
        ours = FastWilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
        theirs = optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    n_folds, pruned, cases = 10, 0, 0
    for _ in range(12):
        study = optuna.create_study(direction=direction)
        best = {i: float(v) for i, v in enumerate(np.round(rng.uniform(0.8, 1.0, n_folds) * 45) / 45)}
        study.add_trial(_trial(best, 0))
        shift = rng.normal(0, 0.05)
        for k in range(1, n_folds + 1):  # the current trial after k folds, in a shuffled fold order
            order = rng.permutation(n_folds)[:k]
            cur = {int(i): float(np.clip(np.round((best[int(i)] + shift + rng.normal(0, 0.03)) * 45) / 45, 0, 1))
                   for i in order}
            trial = _trial(cur, 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = theirs.prune(study, trial)
            assert ours.prune(study, trial) == expected, (best, cur)
            pruned += expected
            cases += 1
    assert 0 < pruned < cases  # both kinds of decision were compared
