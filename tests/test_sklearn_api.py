"""NetClassifier and NetRegressor as scikit-learn estimators: scikit-learn's own checks, parameters, the README example."""

from __future__ import annotations

import pickle
import re
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from gencv import SKLEARN_EXPECTED_FAILED_CHECKS, NetClassifier, NetRegressor

from .conftest import ROOT

SMALL = dict(hidden=(16,), max_epochs=20, lr=0.01, dropout=0.0)


@parametrize_with_checks([NetClassifier(**SMALL), NetRegressor(**SMALL)],  # type: ignore[arg-type]
                         expected_failed_checks=lambda est: SKLEARN_EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator: Any, check: Any) -> None:
    check(estimator)


def test_expected_failed_checks_are_few_and_each_has_a_reason() -> None:
    assert 0 < len(SKLEARN_EXPECTED_FAILED_CHECKS) <= 5
    assert all(name.startswith("check_") and len(reason) > 40 for name, reason in SKLEARN_EXPECTED_FAILED_CHECKS.items())


class _Net(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int, width: int = 4) -> None:
        super().__init__()
        self.width = width
        self.body = torch.nn.Sequential(torch.nn.Linear(n_in, width), torch.nn.ReLU(), torch.nn.Linear(width, n_out))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.body(X)


def _iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    return X, y


def test_module_settings_route_to_the_module_constructor_through_get_set_params_and_clone() -> None:
    X, y = _iris()
    est = NetClassifier(module=_Net, module__width=5, max_epochs=2)
    assert est.get_params()["module__width"] == 5
    est.set_params(module__width=7)
    twin = clone(est)
    assert twin.get_params()["module__width"] == 7 and twin.module is _Net
    twin.fit(X, y)
    assert isinstance(twin.module_, _Net) and twin.module_.width == 7 and twin.n_features_in_ == 4


def test_unknown_settings_are_refused_by_fit_with_a_suggestion() -> None:
    X, y = _iris()
    est = clone(NetClassifier(max_epoch=3))  # a clone keeps the typo, so GridSearchCV cannot lose it
    with pytest.raises(TypeError, match=re.escape("'max_epoch'") + ".*max_epochs"):
        est.fit(X, y)
    with pytest.raises(ValueError, match="lr"):
        NetClassifier(lr=-1.0).fit(X, y)


def test_classes_fix_the_label_set_when_the_data_lack_a_class() -> None:
    X, y = _iris()
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    keep = labels != "virginica"
    est = NetClassifier(classes=["setosa", "versicolor", "virginica"], max_epochs=3, random_state=0)
    est.fit(X[keep], labels[keep])
    assert est.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    assert est.predict_proba(X).shape == (150, 3) and set(est.predict(X)) <= set(est.classes_)
    with pytest.raises(ValueError, match="not in classes"):
        NetClassifier(classes=["setosa", "versicolor"], max_epochs=1).fit(X, labels)
    inferred = NetClassifier(max_epochs=3, random_state=0).fit(X[keep], labels[keep])
    assert inferred.classes_.tolist() == ["setosa", "versicolor"]


def test_early_stopping_validates_inside_the_fit_data_on_its_last_block_when_time_ordered() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=100)
    est = NetRegressor(max_epochs=3, early_stopping={"patience": 2, "valid_fraction": 0.2}, time_ordered=True,
                       time_gap=2, random_state=0).fit(X, y)
    assert est.inner_valid_positions_.tolist() == list(range(80, 100))
    assert est.fit_positions_.tolist() == list(range(78))
    assert est.fit_positions(y).tolist() == list(range(78))


def test_pickled_fitted_estimator_predicts_the_same_after_a_cv_run() -> None:
    from gencv.cv import cross_validate
    from gencv.runner import prepare

    from .conftest import tiny

    prep = prepare(tiny())
    ds = prep.dataset
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds[:1], metric="accuracy", seed=0, keep_estimators=True)
    est = res.folds[0].estimator
    copy = pickle.loads(pickle.dumps(est))  # the engine's per-epoch callback is not kept in the model
    np.testing.assert_array_equal(copy.predict_proba(ds.X), est.predict_proba(ds.X))
    assert copy.loss(ds.X, ds.y) == est.loss(ds.X, ds.y)


def test_feature_names_and_score() -> None:
    pd = pytest.importorskip("pandas")
    X, y = _iris()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    est = NetClassifier(hidden=(8,), max_epochs=5, lr=0.05, random_state=0).fit(frame, y)
    assert est.feature_names_in_.tolist() == ["a", "b", "c", "d"]
    assert est.score(frame, y) == pytest.approx(float((est.predict(frame) == y).mean()))
    reg = NetRegressor(hidden=(8,), max_epochs=20, lr=0.02, random_state=0).fit(X[:, :3], X[:, 3])
    assert 0.5 < reg.score(X[:, :3], X[:, 3]) <= 1.0


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use from scikit-learn", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(_readme_example(), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    accuracy = float(re.search(r"accuracy ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.8
