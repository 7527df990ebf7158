"""`gencv prune`: network pruning swept over sparsity levels, every level scored on the same folds.

Per fold: the network is trained as `gencv run` trains it; then for each method and sparsity level a
copy is pruned, fine-tuned inside the training fold (same optimizer and early-stopping rules) and
scored on its fitted rows, the held-out fold and the test set (gap, requested measures). Level 0
(unpruned, fine-tuned for the same epochs) is the baseline of every method, so extra training is not
mistaken for a pruning effect. Each (method, level) is compared with it by the corrected resampled
t-test and the Bayesian correlated t-test; p-values are Holm-corrected across methods and levels.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gencv.cv import FoldResult, cross_validate, score_fold
from gencv.engines.base import FoldFit
from gencv.errors import GencvError, SpecError
from gencv.report import summarize, value_bounds
from gencv.runner import Prepared, measure_config_for, prepare, run_tags
from gencv.seeds import derive_seed
from gencv.spec import Experiment
from gencv.splits import folds_digest
from gencv.stats import holm
from gencv.studies.compare import RunScores, compare_runs
from gencv.studies.prune_store import PruneStore
from gencv.tracking import NullTracker, Tracker

__all__ = ["BASELINE", "PruneOutcome", "PruneSettings", "check_settings", "engine_note", "parse_levels", "prune_params",
           "run_prune"]

log = logging.getLogger(__name__)

#: the label of level 0 (unpruned, fine-tuned as long as every pruned network)
BASELINE = "unpruned"


@dataclass(frozen=True)
class PruneSettings:
    """What a pruning sweep does besides the spec's training.

    finetune_epochs : epochs of fine-tuning after each pruning round (None: a quarter of train.max_epochs).
    hessian_probes : Rademacher probes of the OBD Hessian diagonal (0: exact, one HVP per parameter).
    iterative : rounds per level; round r prunes to 1 - (1 - level)^(r / K), then fine-tunes.
    rewind : also run each method with the survivors reset to their initial weights and retrained for
        train.max_epochs (the lottery-ticket experiment), reported as METHOD+rewind.
    timing : CPU inference time of the shrunk network (neuron, channel) against the unpruned one.
    """

    methods: tuple[str, ...]
    levels: tuple[float, ...]
    finetune_epochs: int | None = None
    hessian_probes: int = 32
    iterative: int = 1
    rewind: bool = False
    timing: bool = True

    def epochs(self, exp: Experiment) -> int:
        return self.finetune_epochs if self.finetune_epochs is not None else max(1, round(exp.train.max_epochs / 4))

    @property
    def variants(self) -> list[tuple[str, str, bool]]:
        """(label, method, rewind) of every line of the sweep."""
        out = [(m, m, False) for m in self.methods]
        if self.rewind:
            out += [(f"{m}+rewind", m, True) for m in self.methods]
        return out


@dataclass
class PruneOutcome:
    """Per (variant, level, fold) results, the per-(variant, level) table with the tests, and notes."""

    experiment: Experiment
    settings: PruneSettings
    folds: pd.DataFrame  # one row per variant x level x fold (level 0: the baseline, variant BASELINE)
    table: pd.DataFrame  # one row per variant x level: means, intervals, tests vs the baseline
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)


def parse_levels(text: str) -> tuple[float, ...]:
    """`0.5,0.8,0.9` -> (0.5, 0.8, 0.9); each a fraction of weights (or units) removed, in (0, 1)."""
    try:
        levels = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SpecError(f"--levels: got {text!r}; use fractions in (0, 1) separated by commas, e.g. 0.5,0.8,0.9") from None
    bad = [v for v in levels if not 0.0 < v < 1.0]
    if not levels or bad:
        raise SpecError(f"--levels: got {text!r}; every level must lie in (0, 1) (level 0, the unpruned baseline, is "
                        "always included), e.g. 0.5,0.8,0.9")
    return tuple(sorted(set(levels)))


def engine_note(engine: str) -> str:
    """Why a sweep with `train.engine` other than skorch trains its folds with the skorch engine."""
    return (f"train.engine={engine!r} is not used by gencv prune: the folds were trained by the skorch engine "
            "instead (each (method, level) prunes and fine-tunes one fold's own fitted network; there is no batched "
            "pruning path). Scores, spec digest and tags are those of train.engine='skorch', so the unpruned "
            "baseline compares with `gencv run SPEC --set train.engine=skorch`.")


def check_settings(exp: Experiment, settings: PruneSettings) -> None:
    """Refuse unknown methods, a structured method the model cannot take, and bad counts, before training."""
    from gencv.pruning import METHODS

    if not settings.methods:
        raise SpecError("--method: none given; use one or more of " + ", ".join(METHODS))
    for m in settings.methods:
        if m not in METHODS:
            raise SpecError(f"--method: got {m!r}; use one of {', '.join(METHODS)}")
    kind = exp.model.kind
    if "channel" in settings.methods and kind != "cnn":
        raise SpecError(f"--method channel: model.kind is {kind!r}; channel pruning removes conv filters and needs "
                        "model.kind=cnn (use neuron for an MLP's hidden units)")
    if "neuron" in settings.methods and kind not in ("mlp", "cnn"):
        raise SpecError(f"--method neuron: model.kind is {kind!r}; neuron pruning needs model.kind mlp or cnn")
    if settings.iterative < 1:
        raise SpecError(f"--iterative: got {settings.iterative}; use 1 (one-shot) or more rounds")
    if settings.finetune_epochs is not None and settings.finetune_epochs < 0:
        raise SpecError(f"--finetune-epochs: got {settings.finetune_epochs}; use 0 or more")
    if settings.hessian_probes == 1 or settings.hessian_probes < 0:
        raise SpecError(f"--hessian-probes: got {settings.hessian_probes}; use 0 (exact diagonal) or at least 2")


# ---------------------------------------------------------------------------------------------- one fold
@dataclass
class _FoldData:
    """One fold's trained estimator and its rows as the network sees them (preprocessed tensors)."""

    est: Any
    fold: Any
    seed: int
    X_fit: Any
    y_fit: Any
    X_es: Any
    y_es: Any
    loss_fn: Any


def _fold_data(est: Any, X: np.ndarray, y: np.ndarray, fold: Any, seed: int) -> _FoldData:
    import torch

    train = fold.train
    fit_rows = train if est.fit_positions_ is None else train[est.fit_positions_]
    es_rows = None if est.inner_valid_positions_ is None else train[est.inner_valid_positions_]

    def tensors(rows: np.ndarray | None) -> tuple[Any, Any]:
        if rows is None or not len(rows):
            return None, None
        return torch.as_tensor(est.scaled(X[rows])), torch.as_tensor(est.encode_target(y[rows]))

    X_fit, y_fit = tensors(fit_rows)
    X_es, y_es = tensors(es_rows)
    return _FoldData(est, fold, seed, X_fit, y_fit, X_es, y_es, est.net_.criterion_)


def _with_module(est: Any, module: Any, init_state: Any) -> Any:
    """A shallow copy of a fitted estimator whose network is `module` (the original is left untouched)."""
    net = object.__new__(type(est.net_))
    net.__dict__.update(est.net_.__dict__)
    net.__dict__["module_"] = module
    out = object.__new__(type(est))
    out.__dict__.update(est.__dict__)
    out.__dict__["net_"] = net
    out.__dict__["init_state_"] = init_state
    return out


def _train_(module: Any, fd: _FoldData, exp: Experiment, epochs: int, seed: int) -> Any:
    from gencv.engines.optim import make_optimizer
    from gencv.pruning import finetune_

    t = exp.train
    opt, oargs = make_optimizer(t)
    es = t.early_stopping
    return finetune_(module, fd.X_fit, fd.y_fit, fd.loss_fn, epochs=epochs, optimizer=opt, optimizer_args=oargs,
                     lr=t.lr, batch_size=t.batch_size, seed=seed, l1=t.l1, clip_grad_norm=t.clip_grad_norm,
                     X_es=fd.X_es if es else None, y_es=fd.y_es if es else None,
                     patience=es.patience if es else None, min_delta=es.min_delta if es else 0.0,
                     restore_best=es.restore_best if es else True)


def prune_fold(fd: _FoldData, exp: Experiment, settings: PruneSettings, method: str, level: float,
               rewind: bool) -> tuple[Any, dict[str, float]]:
    """Prune a copy of the fold's network to `level`, fine-tune (or rewind and retrain); the estimator and facts."""
    from gencv.pruning import (
        METHODS,
        SaliencyData,
        apply_masks_,
        bake_,
        count_parameters,
        keep_by_norm,
        masks_from_scores,
        rewind_,
        saliency,
        shrink,
        sparsity,
    )

    spec = METHODS[method]
    est = fd.est
    module = copy.deepcopy(est.module_)
    init = copy.deepcopy(est.module_)
    init.load_state_dict(est.init_state_)
    k = settings.iterative
    epochs = exp.train.max_epochs if rewind else settings.epochs(exp)
    facts: dict[str, float] = {"finetune_epochs_run": 0.0}
    n_units0 = None
    for r in range(1, k + 1):
        target = 1.0 - (1.0 - level) ** (r / k)
        seed = derive_seed(fd.seed, "prune", method, level, r)
        if spec.kind == "mask":
            current = {n: lay.weight_mask for n, lay in _masked(module).items()}
            scores = saliency(method, module, SaliencyData(fd.X_fit, fd.y_fit, fd.loss_fn, seed=seed,
                                                           hessian_probes=settings.hessian_probes))
            masks = masks_from_scores(scores, target, spec.scope, keep_pruned=current or None)
            apply_masks_(module, masks)
            if rewind:
                rewind_(module, init.state_dict())
        else:
            step = 1.0 - (1.0 - level) ** (1 / k)  # of the units left: K rounds reach about `level` overall
            keep = keep_by_norm(module, method, step if level > 0 else 0.0)
            if n_units0 is None:
                n_units0 = sum(lay.weight.shape[0] for lay in _units(module, method))
            module = shrink(module, method, keep)
            init = shrink(init, method, keep)
            if rewind:
                module.load_state_dict(init.state_dict())
        if epochs > 0:
            res = _train_(module, fd, exp, epochs, derive_seed(seed, "finetune"))
            facts["finetune_epochs_run"] += res.epochs_run
    bake_(module)
    module.eval()
    overall, _ = sparsity(module)
    facts |= {"sparsity": overall, "n_params": float(count_parameters(module)),
              "n_params_nonzero": float(count_parameters(module, nonzero=True)),
              "n_params_unpruned": float(count_parameters(est.module_))}
    if spec.kind == "structured":
        kept = sum(lay.weight.shape[0] for lay in _units(module, method))
        facts["units_removed_fraction"] = 1.0 - kept / n_units0 if n_units0 else 0.0
        facts["sparsity"] = 1.0 - facts["n_params"] / facts["n_params_unpruned"]  # parameters removed
    init_state = {k_: v.detach().clone() for k_, v in init.state_dict().items()} if spec.kind == "structured" \
        else est.init_state_
    return _with_module(est, module, init_state), facts


def _masked(module: Any) -> dict[str, Any]:
    from gencv.pruning import prunable

    return {n: lay for n, lay in prunable(module).items() if hasattr(lay, "weight_mask")}


def _units(module: Any, method: str) -> list[Any]:
    from gencv.pruning import structured_units

    return [u.layer for u in structured_units(module, method)]


def _timing(module: Any, unpruned: Any, shape: tuple[int, ...]) -> dict[str, float]:
    """CPU ms per forward pass of the shrunk and the unpruned network, batch 1 and 256 (median; one thread)."""
    from gencv.pruning import TIMING_REPEATS, inference_seconds

    out = {"infer_repeats": float(TIMING_REPEATS)}
    for b in (1, 256):
        pruned_s, unpruned_s = inference_seconds([module, unpruned], shape, b)
        out[f"infer_ms_b{b}"] = 1e3 * pruned_s
        out[f"infer_ms_b{b}_unpruned"] = 1e3 * unpruned_s
    return out


# ------------------------------------------------------------------------------------------- the sweep
Step = Callable[[int, str, float, FoldResult], None]


def run_prune(exp: Experiment, settings: PruneSettings, *, tracker: Tracker | None = None,
              on_step: Step | None = None, prepared: Prepared | None = None, resume: str | None = None) -> PruneOutcome:
    """Train every fold once, then prune, fine-tune and score each method at each level; compare with level 0.

    `resume`: the id of an interrupted prune run: its saved trained folds are not retrained and its
    finished (fold, method, level) steps are read back; refused (GencvError naming each difference) when
    the run had another spec or other `prune_params`. `on_step(fold, label, level, result)` is called as
    each step ends, with the pruned network still attached (`result.estimator`, let go after the call).
    """
    check_settings(exp, settings)
    tracker = tracker or NullTracker()
    notes: list[str] = []
    if exp.train.engine != "skorch":
        notes.append(engine_note(exp.train.engine))
        log.warning("%s", notes[-1])
        exp = exp.with_overrides({"train.engine": "skorch"})
    prep = prepared or prepare(exp, tracking_uri=getattr(tracker, "tracking_uri", None))  # model.base's store
    ds = prep.dataset
    digest = folds_digest(prep.folds)
    tags = run_tags(exp, ds, prep.folds)
    if resume:
        PruneStore.check(tracker, resume, exp.digest(), prune_params(exp, settings), exp.flat_params())
        parent = resume
        tracker.client.update_run(parent, status="RUNNING")  # type: ignore[attr-defined]
        saved, done = PruneStore(tracker, parent).load()
        log.info("resuming prune run %s: %d trained fold(s), %d finished step(s)", parent, len(saved), len(done))
    else:
        parent = _start_parent(tracker, exp, settings, tags)
        saved, done = {}, {}
    store = PruneStore(tracker, parent)
    status = "FAILED"
    try:
        trained = _train_folds(exp, prep, tracker, parent, tags, saved, store)
        records = _sweep(exp, settings, prep, trained.ok_folds, on_step, store, done)
        if trained.n_failed:
            notes.append(f"{trained.n_failed} fold(s) failed in training and are left out")
        for r in trained.folds:
            r.estimator = None
        from gencv.studies.prune_report import log_prune, summarize_prune

        outcome = summarize_prune(exp, settings, records, digest, notes)
        outcome.run_id = None if isinstance(tracker, NullTracker) else parent
        log_prune(tracker, parent, outcome, records, tags)
        status = "FINISHED"
        return outcome
    except KeyboardInterrupt as exc:
        status = "KILLED"
        if not isinstance(tracker, NullTracker):
            exc.gencv_run_id = parent  # type: ignore[attr-defined]  # the CLI's resume hint
        raise
    finally:
        tracker.end_run(parent, status)
        flush = getattr(tracker, "flush", None)
        if callable(flush):
            flush()


def prune_params(exp: Experiment, settings: PruneSettings) -> dict[str, str]:
    """The sweep's options as the prune run logs them (MLflow params, strings); a resume must match them."""
    return {"prune.methods": ",".join(settings.methods), "prune.levels": ",".join(f"{v:g}" for v in settings.levels),
            "prune.finetune_epochs": str(settings.epochs(exp)), "prune.iterative": str(settings.iterative),
            "prune.rewind": str(settings.rewind), "prune.hessian_probes": str(settings.hessian_probes)}


def _start_parent(tracker: Tracker, exp: Experiment, settings: PruneSettings, tags: dict[str, str]) -> str:
    parent = tracker.start_run(exp.name, f"{exp.name}-prune", tags={**tags, "gencv.kind": "prune"})
    tracker.log_params(parent, {**exp.flat_params(), **prune_params(exp, settings)})
    tracker.log_text(parent, exp.to_yaml(), "spec.yaml")
    resolve = getattr(tracker, "resolve", None)
    return resolve(parent) if callable(resolve) else parent


def _train_folds(exp: Experiment, prep: Prepared, tracker: Tracker, parent: str, tags: dict[str, str],
                 saved: dict[int, Any], store: PruneStore) -> Any:
    """Every fold trained as `gencv run` trains it (folds saved by an interrupted run are reused), then saved."""
    ds = prep.dataset
    done = {}
    for i, fold in enumerate(prep.folds):
        if fold.index in saved:
            done[i] = FoldResult(index=fold.index, seed=derive_seed(exp.seed, "fold", i), n_train=len(fold.train),
                                 n_valid=len(fold.valid), estimator=saved[fold.index])
    trained_run = None
    if len(done) < len(prep.folds):
        trained_run = tracker.start_run(exp.name, "trained" if not saved else "trained (resumed)", parent=parent,
                                        tags={**tags, "gencv.prune_variant": "trained (before pruning)"})
        tracker.log_params(trained_run, {"n_folds": len(prep.folds), "metric": exp.metric})
    trained = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric=exp.metric, seed=exp.seed,
                             X_test=prep.X_test, y_test=prep.y_test, tracker=tracker, experiment=exp.name,
                             parent_run=trained_run, keep_estimators=True, groups=ds.groups, done=done,
                             train_fraction=exp.data.train_fraction)
    if trained_run is not None:
        tracker.end_run(trained_run, "FINISHED")
    for r in trained.ok_folds:
        if r.index not in saved:
            store.save_trained(r.index, r.estimator)
    return trained


def _sweep(exp: Experiment, settings: PruneSettings, prep: Prepared, trained: Sequence[FoldResult],
           on_step: Step | None, store: PruneStore | None = None,
           done: dict[tuple[str, str, int], tuple[FoldResult, dict[str, float]]] | None = None,
           ) -> dict[tuple[str, float], list[tuple[FoldResult, dict[str, float]]]]:
    """(variant label, level) -> per fold (scored FoldResult, pruning facts); level 0 under BASELINE."""
    from gencv.pruning import METHODS

    ds = prep.dataset
    records: dict[tuple[str, float], list[tuple[FoldResult, dict[str, float]]]] = {}
    steps = [(BASELINE, "random", 0.0, False)]
    steps += [(label, m, lv, rw) for label, m, rw in settings.variants for lv in settings.levels]
    for fr in trained:
        fd = _fold_data(fr.estimator, ds.X, ds.y, prep.folds[fr.index], fr.seed)
        shape = tuple(int(d) for d in fd.X_fit.shape[1:])
        for label, method, level, rewind in steps:
            prior = (done or {}).get((label, f"{level:g}", fr.index))
            if prior is not None:
                records.setdefault((label, level), []).append(prior)
                continue
            est, facts = prune_fold(fd, exp, settings, method, level, rewind)
            res = score_fold(FoldFit(fd.fold, fd.seed, est), ds.X, ds.y, metric=exp.metric, X_test=prep.X_test,
                             y_test=prep.y_test, measures=exp.measures, measure_config=measure_config_for(exp))
            if settings.timing and METHODS[method].kind == "structured" and res.ok:
                facts |= _timing(est.module_, fd.est.module_, shape)
            records.setdefault((label, level), []).append((res, facts))
            if store is not None:
                store.save_step(label, level, res, facts)
            if on_step is not None:  # the pruned network is still attached (res.estimator), then let go
                on_step(fr.index, label, level, res)
            res.estimator = None
            log.info("fold %d %s level %g: valid %s %.4f", fr.index, label, level, exp.metric,
                     res.valid_scores.get(exp.metric, math.nan))
        fr.estimator = None
    return records


def scores_of(records: Sequence[tuple[FoldResult, dict[str, float]]], metric: str, label: str,
              digest: str) -> RunScores:
    """Held-out fold scores of one (variant, level), for the paired tests."""
    folds = [r for r, _ in records if r.ok and np.isfinite(r.valid_scores.get(metric, np.nan))]
    if not folds:
        raise GencvError(f"{label}: no fold finished")
    return RunScores(label, label, metric, {r.index: r.valid_scores[metric] for r in folds},
                     float(np.mean([r.n_train for r in folds])), float(np.mean([r.n_valid for r in folds])),
                     tags={"gencv.folds_digest": digest})


def compare_with_baseline(records: dict[tuple[str, float], list[tuple[FoldResult, dict[str, float]]]],
                          metric: str, digest: str) -> tuple[dict[tuple[str, float], Any], list[str]]:
    """Each (variant, level) against the level-0 baseline: the pair result, and p Holm-corrected across all."""
    notes = []
    base = scores_of(records[(BASELINE, 0.0)], metric, BASELINE, digest)
    pairs = {}
    for key, recs in records.items():
        if key == (BASELINE, 0.0):
            continue
        try:
            (pair,) = compare_runs([scores_of(recs, metric, f"{key[0]}@{key[1]:g}", digest), base]).pairs
            pairs[key] = pair
        except GencvError as exc:
            notes.append(f"{key[0]} at {key[1]:g}: not compared with the baseline: {exc}")
    adjusted = dict(zip(pairs, holm([p.corrected_p for p in pairs.values()]))) if pairs else {}
    return {k: (p, adjusted[k]) for k, p in pairs.items()}, notes


def level_summary(recs: Sequence[tuple[FoldResult, dict[str, float]]], key: str) -> dict[str, float]:
    """Mean and 95% interval over folds of a fold metric or a pruning fact."""
    vals = [({**r.flat_metrics(), **f}).get(key, np.nan) for r, f in recs if r.ok]
    return summarize(vals, bounds=value_bounds(key))
