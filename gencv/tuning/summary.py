"""A study outcome as markdown and as JSON."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gencv.tuning.records import TuneOutcome


def summary_markdown(outcome: TuneOutcome) -> str:
    """A short markdown report of a study (or a nested study)."""
    m = outcome.metric
    lines = [f"# Tuning {outcome.experiment.name}: study {outcome.study_name}", "",
             f"Primary metric **{m}** ({outcome.direction}); storage `{outcome.storage}`.", ""]
    c = outcome.counts
    lines.append(f"Trials: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed.")
    lines.append("")
    if outcome.nested is not None:
        e, ib = outcome.nested.estimate, outcome.nested.inner_best
        lines += ["## Nested CV", "",
                  f"- nested estimate: {e['mean']:.4f} ± {e['std']:.4f} (95% interval {e['ci_low']:.4f} – {e['ci_high']:.4f}; "
                  "the interval treats the outer folds as independent, but they share training data, so it is optimistic)",
                  f"- mean best inner CV score: {ib['mean']:.4f}",
                  f"- optimism = mean best inner CV score − nested estimate (sign flipped for losses; positive: the "
                  f"tuning's own best score flatters the procedure): {outcome.nested.optimism:+.4f}", ""]
    if outcome.nested is not None:
        n = outcome.nested
        lines += ["## Final model", "",
                  f"- the winner of outer folds {n.final_outer_folds} (most outer wins, ties by the best inner CV "
                  "score), refit on all non-test data"]
        lines += [f"- `{k}` = {v}" for k, v in n.final_params.items()] + [""]
    elif outcome.best is not None:
        lines += ["## Best trial", "", f"- trial {outcome.best.number}: {m} {outcome.best.value:.4f}"]
        lines += [f"- `{k}` = {v}" for k, v in outcome.best.params.items()] + [""]
    if outcome.refit_test_scores:
        lines += ["## Refit of the best configuration, held-out test set", ""]
        lines += [f"- {k}: {v:.4f}" for k, v in outcome.refit_test_scores.items()] + [""]
    table = outcome.trials_table()
    if not table.empty:
        lines += ["## Trials", "", table.drop(columns=["reason"]).to_markdown(index=False, floatfmt=".4g"), ""]
    if outcome.measure_report is not None and not outcome.measure_report.empty:
        lines += ["## Measures vs generalization gap across trials (Kendall tau)", "",
                  outcome.measure_report.to_markdown(index=False, floatfmt=".3f"), ""]
    if outcome.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in outcome.notes] + [""]
    return "\n".join(lines)


def outcome_json(outcome: TuneOutcome) -> dict[str, Any]:
    """A JSON-serialisable summary for `--json` output."""

    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        return x

    nested = None
    if outcome.nested is not None:
        nested = {"estimate": outcome.nested.estimate, "inner_best": outcome.nested.inner_best,
                  "optimism": outcome.nested.optimism, "final_params": outcome.nested.final_params,
                  "final_outer_folds": outcome.nested.final_outer_folds,
                  "folds": [{"index": f.index, "best_params": f.best_params, "best_inner": f.best_inner_value,
                             "outer_score": f.outer_score, "n_train": len(f.outer_train), "n_test": len(f.outer_test),
                             "study": f.study_name} for f in outcome.nested.folds]}
    return clean({
        "study": outcome.study_name, "storage": outcome.storage, "metric": outcome.metric,
        "direction": outcome.direction, "run_id": outcome.run_id, "counts": outcome.counts,
        "best": None if outcome.best is None else {"trial": outcome.best.number, "value": outcome.best.value,
                                                   "params": outcome.best.params, "study": outcome.best.study},
        "refit_test_scores": outcome.refit_test_scores, "nested": nested, "finalized": outcome.finalized,
        "trials": [{"study": t.study, "trial": t.number, "state": t.state, "value": t.value, "params": t.params,
                    "folds_run": t.folds_run, "reason": t.reason, "penalized": t.penalized} for t in outcome.trials],
        "measure_report": None if outcome.measure_report is None else outcome.measure_report.to_dict(orient="records"),
        "notes": outcome.notes,
    })

