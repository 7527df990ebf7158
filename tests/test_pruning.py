"""Network pruning core: exact sparsity, saliencies against references, surgery equal to masking, fine-tuning."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gencv.models import CNN, MLP
from gencv.pruning import (
    METHODS,
    SaliencyData,
    apply_masks_,
    bake_,
    count_parameters,
    finetune_,
    hessian_diagonal,
    inference_seconds,
    keep_by_norm,
    mask_units_,
    masks_from_scores,
    prunable,
    rewind_,
    saliency,
    shrink,
    sparsity,
)

DT = torch.float64


def _data(n: int = 40, d: int = 5, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    return X, y.clamp_max(k - 1)


def _mlp(hidden=(6, 5), seed: int = 0, **kw) -> MLP:
    torch.manual_seed(seed)
    return MLP(5, 3, hidden=hidden, **kw).to(DT)


def _dense_hessian(module: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    named = [(n, p.detach()) for n, p in module.named_parameters()]
    sizes = [p.numel() for _, p in named]
    flat = torch.cat([p.reshape(-1) for _, p in named])

    def f(theta: torch.Tensor) -> torch.Tensor:
        parts = {n: t.view(p.shape) for (n, p), t in zip(named, theta.split(sizes))}
        return F.cross_entropy(functional_call(module, parts, (X,)), y)

    return torch.autograd.functional.hessian(f, flat)


@pytest.mark.parametrize("method", ["random", "magnitude", "global_magnitude", "gradient", "hessian"])
@pytest.mark.parametrize("level", [0.0, 0.5, 0.9])
def test_masks_reach_the_stated_sparsity_exactly(method: str, level: float) -> None:
    module = _mlp()
    X, y = _data()
    scores = saliency(method, module, SaliencyData(X, y, F.cross_entropy, seed=1))
    masks = masks_from_scores(scores, level, METHODS[method].scope)
    apply_masks_(module, masks)
    overall, per = sparsity(module)
    sizes = {n: lay.weight.numel() for n, lay in prunable(module).items()}
    if METHODS[method].scope == "layer":
        for n, s in per.items():
            assert s * sizes[n] == round(level * sizes[n])
    assert overall * sum(sizes.values()) == pytest.approx(round(level * sum(sizes.values())), abs=1 if
                                                          METHODS[method].scope == "layer" else 0)


def test_random_at_level_zero_changes_nothing() -> None:
    module = _mlp()
    before = copy.deepcopy(module.state_dict())
    apply_masks_(module, masks_from_scores(saliency("random", module, SaliencyData(seed=3)), 0.0, "layer"))
    bake_(module)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_magnitude_prunes_the_smallest_weights() -> None:
    module = _mlp()
    w = module.net[0].weight.detach().abs().reshape(-1)
    masks = masks_from_scores(saliency("magnitude", module), 0.5, "layer")
    pruned = w[masks["net.0"].reshape(-1) == 0]
    kept = w[masks["net.0"].reshape(-1) == 1]
    assert float(pruned.max()) <= float(kept.min())


def test_gradient_saliency_is_w_times_dl_dw() -> None:
    module = _mlp()
    X, y = _data()
    scores = saliency("gradient", module, SaliencyData(X, y, F.cross_entropy))
    module.zero_grad()
    F.cross_entropy(module(X), y).backward()
    for name, lay in prunable(module).items():
        torch.testing.assert_close(scores[name], (lay.weight * lay.weight.grad).abs().detach(), rtol=1e-12, atol=0)


def test_obd_saliency_equals_half_hii_w2_against_a_dense_hessian() -> None:
    module = _mlp(hidden=(4,))
    X, y = _data()
    H = _dense_hessian(module, X, y)
    diag = torch.diagonal(H)
    offsets, pos = {}, 0
    for n, p in module.named_parameters():
        offsets[n] = (pos, p.numel())
        pos += p.numel()
    scores = saliency("hessian", module, SaliencyData(X, y, F.cross_entropy, hessian_probes=0))
    for name, lay in prunable(module).items():
        start, size = offsets[f"{name}.weight"]
        expected = 0.5 * diag[start:start + size].view_as(lay.weight) * lay.weight.detach() ** 2
        torch.testing.assert_close(scores[name], expected, rtol=1e-6, atol=1e-12)


def test_probed_hessian_diagonal_within_its_standard_error() -> None:
    module = _mlp(hidden=(16, 16))
    X, y = _data(n=60)
    exact, _ = hessian_diagonal(module, X, y, F.cross_entropy, probes=0)
    est, se = hessian_diagonal(module, X, y, F.cross_entropy, probes=200, seed=0)
    z = torch.cat([((est[k] - exact[k]) / se[k].clamp_min(1e-15)).reshape(-1) for k in exact])
    z = z[torch.cat([se[k].reshape(-1) for k in exact]) > 0]
    # z-scores of a mean of 200 probes: about standard normal
    assert float((z.abs() <= 3).double().mean()) >= 0.97
    assert abs(float(z.mean())) < 0.2


@pytest.mark.parametrize("kw", [{}, {"batch_norm": True}, {"activation": "sigmoid"}])
def test_neuron_surgery_shrinks_and_equals_the_masked_network(kw: dict) -> None:
    module = _mlp(hidden=(8, 6), **kw)
    X, _ = _data()
    if kw.get("batch_norm"):  # non-trivial running statistics
        module.train()
        module(X)
    module.eval()
    keep = keep_by_norm(module, "neuron", 0.5)
    assert [len(v) for v in keep.values()] == [4, 3]
    small = shrink(module, "neuron", keep)
    masked = mask_units_(copy.deepcopy(module), "neuron", keep)
    assert count_parameters(small) < count_parameters(module)
    assert small.net[0].out_features == 4
    small.eval()
    masked.eval()
    torch.testing.assert_close(small(X), masked(X), rtol=1e-12, atol=1e-12)


def test_channel_surgery_shrinks_and_equals_the_masked_network() -> None:
    torch.manual_seed(0)
    module = CNN((1, 8, 8), 3, channels=(6, 4), hidden=(5,), batch_norm=True).to(DT)
    X = torch.randn(10, 64, dtype=DT)
    module.train()
    module(X)
    module.eval()
    keep = keep_by_norm(module, "channel", 0.5)
    assert [len(v) for v in keep.values()] == [3, 2]
    small = shrink(module, "channel", keep).eval()
    masked = mask_units_(copy.deepcopy(module), "channel", keep).eval()
    assert count_parameters(small) < count_parameters(module)
    torch.testing.assert_close(small(X), masked(X), rtol=1e-12, atol=1e-12)


def test_structured_pruning_refuses_other_networks() -> None:
    with pytest.raises(TypeError, match="built-in model.kind mlp or cnn"):
        keep_by_norm(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), "neuron", 0.5)
    with pytest.raises(TypeError, match="Conv2d"):
        keep_by_norm(_mlp(), "channel", 0.5)


def test_pruned_weights_stay_zero_through_finetuning() -> None:
    module = _mlp()
    X, y = _data()
    apply_masks_(module, masks_from_scores(saliency("magnitude", module), 0.8, "layer"))
    zero = {n: lay.weight.detach() == 0 for n, lay in prunable(module).items()}
    before = {n: lay.weight.detach().clone() for n, lay in prunable(module).items()}
    res = finetune_(module, X, y, F.cross_entropy, epochs=5, optimizer=torch.optim.Adam,
                    optimizer_args={"weight_decay": 1e-2}, lr=0.05, batch_size=8, seed=0, l1=1e-3)
    assert res.epochs_run == 5
    for n, lay in prunable(module).items():
        assert torch.all(lay.weight[zero[n]] == 0)
        assert not torch.equal(lay.weight[~zero[n]], before[n][~zero[n]])  # the survivors did train
    bake_(module)
    assert sparsity(module)[0] == pytest.approx(0.8, abs=0.01)


def test_finetune_early_stopping_restores_the_best_epoch() -> None:
    module = _mlp()
    X, y = _data()
    Xe, ye = _data(n=20, seed=1)
    res = finetune_(module, X, y, F.cross_entropy, epochs=30, optimizer=torch.optim.SGD, optimizer_args={},
                    lr=0.5, batch_size=8, seed=0, X_es=Xe, y_es=ye, patience=2)
    with torch.no_grad():
        final = float(F.cross_entropy(module(Xe), ye))
    assert final == pytest.approx(min(res.es_losses), rel=1e-12)
    assert res.es_losses[res.best_epoch - 1] == min(res.es_losses)


def test_rewinding_restores_the_initial_values_of_surviving_weights() -> None:
    init = _mlp(seed=1)
    init_state = copy.deepcopy(init.state_dict())
    module = copy.deepcopy(init)
    X, y = _data()
    finetune_(module, X, y, F.cross_entropy, epochs=3, optimizer=torch.optim.Adam, optimizer_args={}, lr=0.05,
              batch_size=8, seed=0)
    apply_masks_(module, masks_from_scores(saliency("magnitude", module), 0.7, "layer"))
    rewind_(module, init_state)
    for name, lay in prunable(module).items():
        kept = lay.weight_mask.bool()
        torch.testing.assert_close(lay.weight[kept], init_state[f"{name}.weight"][kept], rtol=0, atol=0)
        assert torch.all(lay.weight[~kept] == 0)
        torch.testing.assert_close(lay.bias, init_state[f"{name}.bias"], rtol=0, atol=0)


def test_obd_uses_the_public_hvp_core() -> None:
    import gencv.measures._hvp as hvp
    from gencv.measures import LossLandscape

    assert LossLandscape is hvp._Landscape  # the measures' private name still works
    X, y = _data()
    module = _mlp()
    land = LossLandscape(module, X, y, F.cross_entropy)
    diag, _ = hessian_diagonal(module, X, y, F.cross_entropy, probes=0)
    e = torch.zeros(land.n_params, dtype=DT)
    e[3] = 1.0
    assert float(land.hvp(e)[3]) == pytest.approx(float(diag["net.0.weight"].reshape(-1)[3]), rel=1e-12)


def test_inference_timing_is_per_module_on_one_thread_and_restores_the_setting() -> None:
    torch.manual_seed(0)
    big, small = MLP(30, 2, hidden=(256, 256)), MLP(30, 2, hidden=(4,))
    before = torch.get_num_threads()
    seen = []

    class Probe(nn.Module):  # records the thread count while it is timed
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return x

    t_big, t_small, _ = inference_seconds([big, small, Probe()], 30, 256, repeats=7, warmup=2)
    assert torch.get_num_threads() == before
    assert seen == [1] * (2 + 7)  # warm-up and timed passes, all on one thread
    assert t_big > t_small > 0  # 256x256 weights against 4 hidden units: far apart on any machine
    assert inference_seconds([small], (30,), 1, repeats=1)[0] > 0
    with pytest.raises(ValueError, match="repeats: got 0"):
        inference_seconds([small], 30, 1, repeats=0)
