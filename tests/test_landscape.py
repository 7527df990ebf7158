"""Loss landscapes: filter-normalized directions (Li et al. 2018), the 1D/2D grids, the init -> final
interpolation (Goodfellow et al. 2015), their files, and `gencv run` / `gencv measure` logging them."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from torch import nn

from gencv.measures import MeasureConfig, compute_measures, save_landscapes
from gencv.measures._api import _generator
from gencv.measures._hvp import _Landscape
from gencv.measures._landscape import _Evaluator, random_direction
from gencv.measures.config import radius_label

SMALL = {"landscape_points_1d": 11, "landscape_points_2d": 9, "interpolation_points": 6, "landscape_batch": 7}


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()


def _data(n: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).long()


def test_filter_normalized_direction_has_each_filters_norm_and_leaves_biases_and_batch_norm_out() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).double()
    land = _Landscape(net, torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.zeros(5, dtype=torch.long),
                      F.cross_entropy)
    d = land.unflatten(random_direction(land, torch.Generator().manual_seed(3)))
    for name, p in net.named_parameters():
        if p.dim() <= 1:  # conv/linear biases, batch-norm weight and bias
            assert torch.count_nonzero(d[name]) == 0, name
        else:  # each output filter (conv kernel, linear row) has the norm of the weights' filter
            got = d[name].reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(got, p.detach().reshape(p.shape[0], -1).norm(dim=1), rtol=1e-9, atol=0)  # 1e-10 guard
    raw = land.unflatten(random_direction(land, torch.Generator().manual_seed(3), normalize="none"))
    assert all(torch.count_nonzero(v) == v.numel() for v in raw.values())


def test_linear_model_with_squared_loss_2d_surface_is_the_analytic_quadratic() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(4, 2).double()
    X = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randn(30, 2, dtype=torch.float64)
    cfg = MeasureConfig(sample_size=None, **SMALL, landscape_radius=2.0, landscape_rise_radius=0.5)
    res = compute_measures(lin, X, y, F.mse_loss, ["landscape_2d"], seed=5, config=cfg)
    land = _Landscape(lin, X, y, F.mse_loss)
    gen = _generator(5, "landscape_2d")  # the measure's own generator: the same two directions
    d1, d2 = (land.unflatten(random_direction(land, gen))["weight"] for _ in range(2))
    assert torch.count_nonzero(land.unflatten(random_direction(land, gen))["bias"]) == 0
    # L(a, b) = mean((r + a X d1^T + b X d2^T)^2) with r the residual: a quadratic in (a, b)
    r = (X @ lin.weight.T + lin.bias - y).detach().numpy()
    u, v = (X @ d1.T).numpy(), (X @ d2.T).numpy()
    grid = res.landscapes["landscape_2d"]
    a, b = np.meshgrid(grid["alpha"], grid["beta"], indexing="ij")
    c = [np.mean(t) for t in (r * r, 2 * r * u, 2 * r * v, u * u, 2 * u * v, v * v)]
    expected = c[0] + a * c[1] + b * c[2] + a * a * c[3] + a * b * c[4] + b * b * c[5]
    np.testing.assert_allclose(grid["train"], expected, rtol=1e-10, atol=1e-12)
    assert grid["train"].shape == (9, 9) and "valid" not in grid  # no held-out rows given
    # the rise on the circle of radius 0.5: the quadratic's mean there is c0 + (c3 + c5) r^2 / 2
    assert res.values["landscape_2d_rise_r0p5_train"] == pytest.approx((c[3] + c[5]) * 0.25 / 2, rel=1e-10)
    i, j = np.unravel_index(np.argmin(expected), expected.shape)
    assert res.values["landscape_2d_min_dist_train"] == pytest.approx(math.hypot(a[i, j], b[i, j]), abs=1e-12)


def _rescaled(net: nn.Sequential, c: float) -> nn.Sequential:
    """The same function: hidden ReLU layer's filters (weight rows and bias) x c, the next layer's weights / c."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        out[0].weight.mul_(c)
        out[0].bias.mul_(c)
        out[2].weight.div_(c)
    return out


def test_filter_normalization_makes_the_1d_curve_invariant_to_rescaling_a_relu_layer() -> None:
    net, (X, y) = _mlp(), _data()
    big = _rescaled(net, 10.0)
    torch.testing.assert_close(big(X), net(X), rtol=1e-12, atol=1e-12)
    cfg = MeasureConfig(sample_size=None, **SMALL)
    curve = compute_measures(net, X, y, F.cross_entropy, ["landscape_1d"], seed=2, config=cfg).landscapes
    curve_big = compute_measures(big, X, y, F.cross_entropy, ["landscape_1d"], seed=2, config=cfg).landscapes
    np.testing.assert_allclose(curve_big["landscape_1d"]["train"], curve["landscape_1d"]["train"], rtol=1e-9)
    # without filter normalization the same draws give a different curve: the rescaling shows
    losses = []
    for module in (net, big):
        land = _Landscape(module, X, y, F.cross_entropy)
        d = random_direction(land, torch.Generator().manual_seed(0), normalize="none")
        steps = torch.linspace(-1, 1, 11, dtype=torch.float64)[:, None]
        losses.append(_Evaluator(land, 4, []).losses(land.w0, steps, d[None, :]))
    assert np.max(np.abs(losses[0] - losses[1])) > 0.1


def test_interpolation_end_points_are_the_initial_and_final_losses_on_both_splits() -> None:
    net, (X, y) = _mlp(), _data(60)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(net(X[:40]), y[:40]).backward()
        opt.step()
    start = _mlp()
    start.load_state_dict(init)
    cfg = MeasureConfig(sample_size=None, **SMALL)
    res = compute_measures(net, X[:40], y[:40], F.cross_entropy, ["interpolation"], seed=0, config=cfg,
                           init_state=init, held_out=(X[40:], y[40:]))
    curve = res.landscapes["interpolation"]
    np.testing.assert_allclose(curve["t"], np.linspace(0, 1, 6))
    with torch.no_grad():
        for split, rows in (("train", slice(0, 40)), ("valid", slice(40, 60))):
            assert curve[split][0] == pytest.approx(float(F.cross_entropy(start(X[rows]), y[rows])), rel=1e-12)
            assert curve[split][-1] == pytest.approx(float(F.cross_entropy(net(X[rows]), y[rows])), rel=1e-12)
            bump = np.max(curve[split] - np.minimum.accumulate(curve[split]))
            assert res.values[f"interpolation_max_bump_{split}"] == pytest.approx(bump, abs=1e-15)
            assert res.values[f"interpolation_loss_init_{split}"] == curve[split][0]
    assert res.values["interpolation_loss_init_train"] > 3 * curve["train"][-1]  # it did learn
    skipped = compute_measures(net, X, y, F.cross_entropy, ["interpolation"], seed=0, config=cfg)
    assert "interpolation" not in skipped.landscapes and any("no initial weights" in n for n in skipped.notes)


def test_batched_losses_equal_one_forward_per_weight_vector_and_the_1d_rise() -> None:
    net, (X, y) = _mlp(), _data()
    cfg = MeasureConfig(sample_size=None, **SMALL, landscape_directions=2, landscape_rise_radius=0.2, batch_size=16)
    res = compute_measures(net, X[:30], y[:30], F.cross_entropy, ["landscape_1d"], seed=4, config=cfg,
                           held_out=(X[30:], y[30:]))
    curves = res.landscapes["landscape_1d"]
    assert curves["train"].shape == curves["valid"].shape == (2, 11)
    for split, rows in (("train", slice(0, 30)), ("valid", slice(30, 40))):
        land = _Landscape(net, X[rows], y[rows], F.cross_entropy)
        gen = _generator(4, "landscape_1d")  # the measure's generator: both splits see the same directions
        rises = []
        for k in range(2):
            d = random_direction(land, gen)
            one = [land.loss(land.w0 + a * d) for a in curves["alpha"]]
            np.testing.assert_allclose(curves[split][k], one, rtol=1e-12)
            rises.append(np.mean([land.loss(land.w0 + s * d) for s in (-0.2, 0.2)]) - land.loss())
        assert res.values[f"landscape_1d_rise_r0p2_{split}"] == pytest.approx(np.mean(rises), rel=1e-10)
    assert any("landscape_1d: 2 directions x 11 points" in n and "(vmap," in n for n in res.notes)


def test_a_model_vmap_cannot_run_is_evaluated_one_vector_at_a_time_with_a_note() -> None:
    class Branchy(nn.Module):  # data-dependent Python control flow: vmap refuses it
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.lin(x)
            return out if float(out.sum()) > -1e9 else -out

    torch.manual_seed(0)
    net = Branchy().double()
    X, y = _data(20)
    cfg = MeasureConfig(sample_size=None, **SMALL)
    res = compute_measures(net, X, y, F.cross_entropy, ["landscape_1d"], seed=0, config=cfg)
    assert any("vmap cannot run this model" in n for n in res.notes)
    land = _Landscape(net, X, y, F.cross_entropy)
    d = random_direction(land, _generator(0, "landscape_1d"))
    np.testing.assert_allclose(res.landscapes["landscape_1d"]["train"][0],
                               [land.loss(land.w0 + a * d) for a in res.landscapes["landscape_1d"]["alpha"]],
                               rtol=1e-12)


@pytest.mark.parametrize(("options", "message"), [
    ({"landscape_points_2d": 40}, "landscape_points_2d must be odd"),
    ({"landscape_points_1d": 1}, "landscape_points_1d must be odd and >= 3"),
    ({"landscape_radius": 0.0}, "landscape_radius must be a finite number > 0"),
    ({"landscape_rise_radius": -1.0}, "landscape_rise_radius"),
    ({"landscape_folds": "some"}, "landscape_folds: got 'some'; use 'all', 'none'"),
    ({"landscape_folds": [0, -1]}, "landscape_folds: got"),
    ({"interpolation_points": 1}, "interpolation_points must be >= 2"),
    ({"landscape_batch": 0}, "landscape_batch must be >= 1"),
])
def test_bad_landscape_options_name_the_field(options: dict, message: str) -> None:
    from gencv.errors import SpecError
    from gencv.spec import validate_experiment

    with pytest.raises(ValueError, match=message):
        MeasureConfig(**options)
    with pytest.raises(SpecError, match=r"measure_options"):
        validate_experiment({"measures": ["landscape_1d"], "measure_options": options})


def test_landscape_folds_selects_the_folds_and_radius_labels_are_metric_safe() -> None:
    names = ["hessian_top", "landscape_1d", "interpolation"]
    assert MeasureConfig().measures_for_fold(names, 4) == names
    assert MeasureConfig(landscape_folds="none").measures_for_fold(names, 0) == ["hessian_top"]
    picked = MeasureConfig(landscape_folds=[2, 0, 2])
    assert picked.landscape_folds == (0, 2) and picked.measures_for_fold(names, 2) == names
    assert picked.measures_for_fold(names, 1) == ["hessian_top"]
    assert [radius_label(r) for r in (0.5, 1.0, 0.25, 2)] == ["r0p5", "r1", "r0p25", "r2"]


def test_save_landscapes_writes_pngs_csvs_and_one_npz(tmp_path) -> None:
    import pandas as pd

    net, (X, y) = _mlp(), _data()
    init = {k: v + 0.3 for k, v in net.state_dict().items()}
    cfg = MeasureConfig(sample_size=None, **SMALL)
    res = compute_measures(net, X[:30], y[:30], F.cross_entropy, ["landscape_1d", "landscape_2d", "interpolation"],
                           seed=0, config=cfg, init_state=init, held_out=(X[30:], y[30:]))
    written = save_landscapes(res.landscapes, tmp_path, "fold3")
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert names == ["landscape/interpolation_fold3.csv", "landscape/landscape_1d_fold3.csv",
                     "landscape/landscape_2d_fold3.csv", "landscape/landscape_fold3.npz",
                     "plots/interpolation_fold3.png", "plots/landscape_1d_fold3.png", "plots/landscape_2d_fold3.png"]
    grid2 = pd.read_csv(tmp_path / "landscape" / "landscape_2d_fold3.csv")
    assert list(grid2.columns) == ["alpha", "beta", "loss_train", "loss_valid"] and len(grid2) == 81
    np.testing.assert_allclose(grid2["loss_valid"].to_numpy(), res.landscapes["landscape_2d"]["valid"].ravel())
    with np.load(tmp_path / "landscape" / "landscape_fold3.npz") as z:
        np.testing.assert_array_equal(z["interpolation__train"], res.landscapes["interpolation"]["train"])
    for png in tmp_path.glob("plots/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_gencv_run_and_measure_log_the_landscape_pictures_and_grids(tmp_path, tracking_uri: str) -> None:
    from typer.testing import CliRunner

    from gencv.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: tiny-landscape\ndata: {source: iris, test_size: 0.2}\nmodel: {hidden: [8], dropout: 0.0}\n"
        "train: {max_epochs: 4, batch_size: 32}\ncv: {kind: stratified, n_splits: 3}\n"
        "measures: [landscape_1d, interpolation]\n"
        "measure_options: {landscape_points_1d: 11, interpolation_points: 6, landscape_folds: [0, 2]}\n")
    cli = CliRunner()
    res = cli.invoke(app, ["run", str(spec), "--tracking-uri", tracking_uri, "-q", "--json"])
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny-landscape").experiment_id],
                                "tags.gencv.kind = 'cv'")
    run_id = run.info.run_id
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    grids = {a.path for a in client.list_artifacts(run_id, "landscape")}
    for label in ("fold0", "fold2", "refit"):  # landscape_folds [0, 2], and the refit model
        assert {f"plots/landscape_1d_{label}.png", f"plots/interpolation_{label}.png"} <= plots
        assert {f"landscape/landscape_1d_{label}.csv", f"landscape/landscape_{label}.npz"} <= grids
    assert not any("fold1" in p for p in plots | grids)
    metrics = run.data.metrics
    # per fold the scalar summaries, summarised on the parent; the refit's beside the test rows
    for key in ("landscape_1d_rise_r0p5_train", "landscape_1d_rise_r0p5_valid", "interpolation_max_bump_valid"):
        assert key + "_mean" in metrics and "refit_" + key in metrics
    folds = {r.data.params["fold"]: r.data.metrics for r in client.search_runs(
        [run.info.experiment_id], "tags.gencv.kind = 'fold'")}
    assert "landscape_1d_rise_r0p5_valid" in folds["0"] and "landscape_1d_rise_r0p5_valid" not in folds["1"]
    assert folds["0"]["interpolation_loss_init_train"] > folds["0"]["measure_loss"]
    # `gencv measure` draws them again for the logged refit model
    res = cli.invoke(app, ["measure", run_id, "-m", "landscape_2d", "--tracking-uri", tracking_uri])
    assert res.exit_code == 0, res.output
    assert "landscape_2d: 41 x 41 grid" in res.output
    assert "plots/landscape_2d_refit.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "refit_landscape_2d_min_dist_valid" in client.get_run(run_id).data.metrics
