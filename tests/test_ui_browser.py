"""`gencv ui` in a real browser: headless Chromium renders MLflow's UI on a store with one gencv run.

Screenshots (run list, run page, its metric charts and plots) are saved in the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gencv.runner import run_experiment
from gencv.tracking import MlflowTracker
from gencv.tracking.mlflow_tracker import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

from .browser import Browser, chromium_or_skip
from .conftest import tiny
from .test_cli import _clean_env, _gencv, _procs_with

SERVER_START = 300.0  # seconds: MLflow's server starts slowly on a busy machine
RENDER = 120.0  # seconds for a page to fetch and draw its data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _gencv_ui(uri: str, tmp_path: Path) -> Iterator[str]:
    """Run `gencv ui` on `uri`; yield the address it prints once the server answers; always stop it."""
    port = _free_port()
    token = f"GENCV_UI_BROWSER_TEST={uuid.uuid4().hex}"
    log = tmp_path / "ui.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(_gencv("ui", "--port", str(port), "--tracking-uri", uri),
                                env=_clean_env(**dict([token.split("=")])), cwd=tmp_path, stdout=fh, stderr=fh)
    try:
        deadline = time.monotonic() + SERVER_START
        url = None
        while True:
            if url is None and (m := re.search(r"MLflow UI on (\S+)", log.read_text(errors="replace"))):
                url = m.group(1)
            if url is not None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
            assert proc.poll() is None, f"gencv ui exited with {proc.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the UI did not answer in {SERVER_START:g} s: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # gencv ui stops the server's whole process group
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        deadline = time.monotonic() + 10
        while _procs_with(token) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _procs_with(token):  # what this test started and left behind
            os.kill(pid, signal.SIGKILL)


_HREFS = "[...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))"
_CHART_TITLES = ("[...document.querySelectorAll('[data-testid=\"experiment-view-compare-runs-card\"]')]"
                 ".filter(c => c.querySelector('.js-plotly-plot svg.main-svg'))"
                 ".map(c => c.innerText.split('\\n')[0].trim())")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ui_renders_fold_runs_metric_charts_and_plots_in_chromium(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(uri)
    out = run_experiment(tiny(name="ui-browser"), tracker=tracker)
    tracker.close()
    client = MlflowClient(uri)
    parent = client.get_run(out.run_id)
    exp_id = parent.info.experiment_id
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    children = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{out.run_id}'")
    folds = sorted(c.info.run_name for c in children)
    assert folds == ["fold-0", "fold-1", "fold-2"]
    plots = sorted(a.path.split("/")[-1] for a in client.list_artifacts(out.run_id, "plots"))
    assert plots == ["confusion_matrix.png", "fold_scores.png", "learning_curves.png"]
    run_name = parent.info.run_name
    (model,) = client.search_logged_models(experiment_ids=[exp_id])
    assert model.source_run_id == out.run_id
    model_id = model.model_id
    (dataset,) = {i.dataset.name for i in parent.inputs.dataset_inputs}
    head = Path(client.download_artifacts(out.run_id, "plots/fold_scores.png", str(tmp_path))).read_bytes()[:24]
    png_size = struct.unpack(">II", head[16:24])  # width, height from the PNG's IHDR chunk

    with _gencv_ui(uri, tmp_path) as url, Browser.start(chromium, tmp_path / "chromium") as b:
        origin, _, query = url.partition("/#/experiments")
        assert query == "?workflowType=machine_learning"
        # The printed address opens the model-training view, and links keep it: runs list, no GenAI pages.
        b.goto(url)
        b.wait_for("document.body.innerText.includes('ui-browser')", RENDER, "the experiment list")
        b.goto(f"{origin}/#/experiments/{exp_id}/runs{query}")
        b.wait_for(f"document.body.innerText.includes({run_name!r})", RENDER, "the run in the run list")
        hrefs = b.evaluate(_HREFS)
        assert any(f"/experiments/{exp_id}/runs" in h for h in hrefs)
        assert not [h for h in hrefs if re.search(r"/(judges|chat-sessions|overview)", h)], hrefs
        b.screenshot(tmp_path / "run_list.png")

        # The run page lists the fold runs as child runs.
        b.goto(f"{origin}/#/experiments/{exp_id}/runs/{out.run_id}{query}")
        b.wait_for(" && ".join(f"document.body.innerText.includes({f!r})" for f in folds), RENDER, "the fold runs")
        hrefs = b.evaluate(_HREFS)
        for child in children:
            assert any(h.endswith(f"/runs/{child.info.run_id}") for h in hrefs), child.info.run_name
        # ... the refit model under "Logged models", linked to its model page, and the data set under "Datasets"
        b.wait_for(f"[...document.querySelectorAll('a[href]')].some(a => a.href.includes({model_id!r}))", RENDER,
                   "a link to the logged model")
        b.wait_for(f"document.body.innerText.includes({dataset!r})", RENDER, "the data set under Datasets")
        b.screenshot(tmp_path / "run_page.png")
        b.evaluate(f"[...document.querySelectorAll('a[href]')].find(a => a.href.includes({model_id!r}))"
                   ".scrollIntoView()")
        b.screenshot(tmp_path / "run_page_model.png")

        # Metric charts: plotly charts drawn, titled by metrics of this run.
        b.goto(f"{origin}/#/experiments/{exp_id}/runs/{out.run_id}/model-metrics{query}")
        titles = b.wait_for(f"(t => t.length ? t : null)({_CHART_TITLES})", RENDER, "a drawn metric chart")
        assert set(titles) <= set(parent.data.metrics) and titles, titles
        b.screenshot(tmp_path / "run_metrics.png")

        # The plots: listed under plots/, and one previewed as a loaded image.
        b.goto(f"{origin}/#/experiments/{exp_id}/runs/{out.run_id}/artifacts/plots/fold_scores.png{query}")
        b.wait_for(" && ".join(f"document.body.innerText.includes({p!r})" for p in plots), RENDER, "the plot names")
        # the preview is a blob: image; it must have the logged PNG's own size
        shown = b.wait_for(f"[...document.images].filter(i => i.src.startsWith('blob:') && i.complete)"
                           f".map(i => [i.naturalWidth, i.naturalHeight]).find(s => s[0] === {png_size[0]}"
                           f" && s[1] === {png_size[1]})", RENDER, f"a {png_size} preview of fold_scores.png")
        assert shown == list(png_size)
        b.screenshot(tmp_path / "run_plots.png")
