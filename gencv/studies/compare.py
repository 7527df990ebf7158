"""`gencv compare`: are finished runs really different? Paired, corrected tests on their fold scores.

Runs are compared on the folds they share, fold by fold. CV training sets overlap, so fold scores
are correlated: the plain paired t-test is far too confident. The corrected resampled t-test
(Nadeau & Bengio) and the Bayesian correlated t-test (Benavoli et al. 2017) account for that; the
plain test is reported beside them, marked as over-confident, never alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gencv.errors import GencvError
from gencv.metrics import METRICS
from gencv.stats import bayesian_correlated_ttest, corrected_ttest, holm, paired_ttest

__all__ = ["Comparison", "ComparisonError", "PairResult", "RunScores", "compare_runs", "comparison_table",
           "default_rope", "load_run_scores", "plot_posteriors"]

log = logging.getLogger(__name__)

#: run kinds whose child fold runs hold per-fold scores
_COMPARABLE = ("cv", "trial")


class ComparisonError(GencvError, ValueError):
    """Runs that cannot be compared (other folds, no fold scores, unknown metric)."""


@dataclass(frozen=True)
class RunScores:
    """One run's held-out fold scores in one metric, with what is needed to check pairing."""

    run_id: str
    label: str
    metric: str
    scores: dict[int, float]  # fold index -> held-out score (successful folds only)
    n_train: float  # mean training-fold size
    n_test: float  # mean held-out fold size
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.scores.values()))) if self.scores else float("nan")


@dataclass(frozen=True)
class PairResult:
    """Run a against run b; every difference oriented so that positive means `a` is better."""

    a: str
    b: str
    n_folds: int
    mean_diff: float
    corrected_p: float
    corrected_p_holm: float
    ci_low: float
    ci_high: float
    p_a_better: float  # Bayesian: P(mean difference > rope)
    p_equivalent: float  # P(|mean difference| <= rope)
    p_b_better: float  # P(mean difference < -rope)
    plain_p: float  # the plain paired t-test: over-confident, shown for contrast only
    posterior: tuple[float, float, float]  # Student t (df, loc, scale) of the mean difference


@dataclass(frozen=True)
class Comparison:
    """All pairs of runs, Holm-corrected across pairs, and a ranking by mean score."""

    metric: str
    higher_is_better: bool
    rope: float
    rope_note: str
    runs: list[RunScores]
    pairs: list[PairResult]
    ranking: list[tuple[str, float, int]]  # (run id, mean score, pairs won with P(better) > 0.95)
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "higher_is_better": self.higher_is_better, "rope": self.rope,
            "rope_note": self.rope_note, "notes": self.notes,
            "runs": [{"run_id": r.run_id, "label": r.label, "mean": r.mean, "n_folds": len(r.scores),
                      "scores": {str(k): v for k, v in sorted(r.scores.items())}} for r in self.runs],
            "pairs": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(p).items()} for p in self.pairs],
            "ranking": [{"run_id": r, "mean": m, "wins": w} for r, m, w in self.ranking],
        }


def _scores_in_run(client: Any, run_id: str, metric: str) -> tuple[dict[int, float], list[float], list[float]]:
    """Per-fold held-out scores a run recorded as steps (`fold_valid_<metric>`, step = fold index), the last
    value of each step (a fold fitted again by --resume), successful folds only; with fold sizes."""
    def last(key: str) -> dict[int, float]:
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        return {int(m.step): float(m.value) for m in hist}

    values, ok = last(f"fold_valid_{metric}"), last("fold_ok")
    n_train, n_valid = last("fold_n_train"), last("fold_n_valid")
    scores = {i: v for i, v in values.items() if ok.get(i) == 1.0 and np.isfinite(v)}
    return scores, [n_train.get(i, np.nan) for i in scores], [n_valid.get(i, np.nan) for i in scores]


def load_run_scores(client: Any, run_id: str, metric: str | None = None) -> RunScores:
    """Held-out fold scores of a `gencv run` parent run or a study trial, read from its fold runs."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise ComparisonError(f"run {run_id!r}: not found in the tracking store ({str(exc).splitlines()[0]}); "
                              "pass run ids printed by `gencv run` (or trial runs of a study)") from None
    tags, params = dict(run.data.tags), dict(run.data.params)
    kind = tags.get("gencv.kind", "")
    if kind not in _COMPARABLE:
        what = {"fold": "a fold run (pass its parent run)",
                "study": "a study run (pass trial runs, or the runs of `gencv run` you refit)"}.get(kind, f"kind {kind!r}")
        raise ComparisonError(f"run {run_id}: is {what}; `gencv compare` needs runs of `gencv run` or trials of a study")
    if metric is None:
        metric = params.get("metric")
        if metric is None and kind == "trial":
            parent = tags.get("mlflow.parentRunId")
            metric = client.get_run(parent).data.params.get("metric") if parent else None
        if metric is None:
            raise ComparisonError(f"run {run_id}: its primary metric is not logged; pass --metric")
    if metric not in METRICS:
        raise ComparisonError(f"--metric: got {metric!r}; use one of {', '.join(METRICS)}")
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}' and tags.`gencv.kind` = 'fold'",
        max_results=50000,
    )
    scores: dict[int, float] = {}
    n_train, n_test = [], []
    for c in children:
        value = c.data.metrics.get(f"valid_{metric}")
        if c.data.tags.get("gencv.status", "ok") != "ok" or value is None or not np.isfinite(value):
            continue
        scores[int(c.data.tags["gencv.fold"])] = float(value)
        n_train.append(float(c.data.params.get("n_train", "nan")))
        n_test.append(float(c.data.params.get("n_valid", "nan")))
    if not children:  # tracking.fold_runs: the folds are steps of the run itself
        scores, n_train, n_test = _scores_in_run(client, run.info.run_id, metric)
    if not scores:
        raise ComparisonError(f"run {run_id}: no finished fold has valid_{metric}; was it tracked with fold runs, "
                              f"and is {metric!r} one of its metrics?")
    label = run.info.run_name or run_id[:8]
    return RunScores(run.info.run_id, label, metric, scores, float(np.nanmean(n_train)), float(np.nanmean(n_test)),
                     tags, params)


def default_rope(metric: str, baseline: RunScores) -> tuple[float, str]:
    """The region of practical equivalence: 0.01 for scores in [0, 1]; 1% of the baseline's mean otherwise."""
    lo, hi = METRICS[metric].bounds
    if lo >= 0.0 and hi <= 1.0:
        return 0.01, f"rope 0.01 ({metric} lies in [0, 1])"
    rope = 0.01 * abs(baseline.mean)
    return rope, f"rope {rope:.4g} = 1% of |mean {metric}| of the baseline {baseline.label} ({baseline.mean:.4g})"


def _check_pairing(a: RunScores, b: RunScores) -> list[str]:
    """Refuse runs scored on other folds; notes for what differs but is allowed."""
    da, db = a.tags.get("gencv.folds_digest"), b.tags.get("gencv.folds_digest")
    if da and db:
        if da != db:
            raise ComparisonError(
                f"runs {a.run_id} and {b.run_id} were scored on different folds (folds digest {da} vs {db}); "
                "paired tests need the same folds: compare runs of the same data, data.test_size, cv and seed")
    else:  # runs of an older gencv: the folds follow from the data, the CV spec and the seed
        keys = [k for k in set(a.params) | set(b.params) if k.startswith(("cv.", "data.")) or k == "seed"]
        keys = [k for k in keys if not k.startswith("data.train_fraction")]
        differ = sorted(k for k in keys if a.params.get(k) != b.params.get(k))
        if a.tags.get("gencv.data_digest") != b.tags.get("gencv.data_digest"):
            differ.insert(0, "data digest")
        if differ:
            raise ComparisonError(
                f"runs {a.run_id} and {b.run_id} may not share folds (no folds digest logged; they differ in "
                f"{', '.join(differ[:6])}); compare runs of the same data, cv and seed")
    notes = []
    ea, eb = a.tags.get("gencv.engine", "skorch"), b.tags.get("gencv.engine", "skorch")
    if ea != eb:
        notes.append(f"{a.label} and {b.label} were trained by different engines ({ea} vs {eb}): a difference "
                     "may come from the engine")
    return notes


def compare_runs(runs: Sequence[RunScores], *, rope: float | None = None) -> Comparison:
    """Every pair of runs on their shared folds: corrected t-test, Bayesian correlated t-test, plain t-test."""
    if len(runs) < 2:
        raise ComparisonError("compare needs at least 2 runs")
    if len({r.run_id for r in runs}) < len(runs):
        raise ComparisonError("the same run is given twice; pass different runs")
    names = [r.label for r in runs]
    if len(set(names)) < len(names):  # runs of one spec share a name: tell them apart by id
        runs = [replace(r, label=f"{r.label}@{r.run_id[:8]}") for r in runs]
    metric = runs[0].metric
    higher = METRICS[metric].higher_is_better
    sign = 1.0 if higher else -1.0
    if rope is None:
        rope, rope_note = default_rope(metric, runs[0])
    else:
        if not (np.isfinite(rope) and rope >= 0):
            raise ComparisonError(f"--rope: got {rope}; use a number >= 0 in {metric}'s units (e.g. 0.01)")
        rope_note = f"rope {rope:g} (given)"
    notes: list[str] = []
    raw = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            a, b = runs[i], runs[j]
            notes += _check_pairing(a, b)
            shared = sorted(set(a.scores) & set(b.scores))
            if len(shared) < 2:
                raise ComparisonError(f"runs {a.run_id} and {b.run_id} share {len(shared)} successful fold(s); "
                                      "paired tests need at least 2")
            if len(shared) < max(len(a.scores), len(b.scores)):
                notes.append(f"{a.label} vs {b.label}: compared on the {len(shared)} folds both finished")
            xa = sign * np.array([a.scores[k] for k in shared])
            xb = sign * np.array([b.scores[k] for k in shared])
            n_train, n_test = (a.n_train + b.n_train) / 2, (a.n_test + b.n_test) / 2
            corr = corrected_ttest(xa, xb, n_train=n_train, n_test=n_test)
            bayes = bayesian_correlated_ttest(xa, xb, n_train=n_train, n_test=n_test, rope=rope)
            plain = paired_ttest(xa, xb)
            raw.append((a, b, len(shared), corr, bayes, plain))
    adjusted = holm([corr.p_value for *_, corr, _, _ in raw])
    pairs = [PairResult(a.run_id, b.run_id, n, corr.mean_diff, corr.p_value, adj, corr.ci_low, corr.ci_high,
                        bayes.p_above, bayes.p_rope, bayes.p_below, plain.p_value,
                        (float(bayes.df), float(bayes.mean), float(bayes.scale)))
             for (a, b, n, corr, bayes, plain), adj in zip(raw, adjusted)]
    wins = {r.run_id: 0 for r in runs}
    for p in pairs:
        if p.p_a_better > 0.95:
            wins[p.a] += 1
        elif p.p_b_better > 0.95:
            wins[p.b] += 1
    order = sorted(runs, key=lambda r: (-wins[r.run_id], -sign * r.mean))
    ranking = [(r.run_id, r.mean, wins[r.run_id]) for r in order]
    return Comparison(metric, higher, float(rope), rope_note, list(runs), pairs, ranking, list(dict.fromkeys(notes)))


def plot_posteriors(comparison: Comparison, directory: str | Path) -> list[Path]:
    """One PNG per pair: the posterior of the mean difference (positive: a better), the ROPE shaded."""
    from scipy import stats as sps

    from gencv.report import pyplot

    plt = pyplot()
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = {r.run_id: r.label for r in comparison.runs}
    paths = []
    for p in comparison.pairs:
        df, loc, scale = p.posterior
        fig, ax = plt.subplots(figsize=(7.2, 4.0))
        width = max(scale * 5, comparison.rope * 2, 1e-9)
        x = np.linspace(loc - width, loc + width, 400)
        dens = sps.t.pdf(x, df, loc=loc, scale=scale) if scale > 0 else np.zeros_like(x)
        ax.plot(x, dens, color="C0")
        ax.fill_between(x, dens, where=np.abs(x) <= comparison.rope, color="0.8", label=f"ROPE ±{comparison.rope:.3g}")
        ax.axvline(0, color="0.4", lw=0.8)
        direction = "higher" if comparison.higher_is_better else "lower"
        ax.set_xlabel(f"mean difference in {comparison.metric}, A − B (> 0: A better; {direction} {comparison.metric} "
                      "is better)", fontsize=9)
        ax.set_ylabel("posterior density")
        ax.set_title(f"A = {labels[p.a]}   B = {labels[p.b]}\nP(A better) {p.p_a_better:.3f}   "
                     f"P(equivalent) {p.p_equivalent:.3f}   P(B better) {p.p_b_better:.3f}", fontsize=9)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"posterior_{p.a[:8]}_vs_{p.b[:8]}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def comparison_table(comparison: Comparison) -> list[dict[str, Any]]:
    """Rows for printing: one per pair."""
    labels = {r.run_id: r.label for r in comparison.runs}
    rows = []
    for p in comparison.pairs:
        rows.append({"a": labels[p.a], "b": labels[p.b], "folds": p.n_folds, "mean diff": p.mean_diff,
                     "95% CI (corrected)": f"[{p.ci_low:.4f}, {p.ci_high:.4f}]", "p corrected": p.corrected_p,
                     "p Holm": p.corrected_p_holm, "P(a better)": p.p_a_better, "P(equiv)": p.p_equivalent,
                     "P(b better)": p.p_b_better, "p plain (over-confident)": p.plain_p})
    return rows
