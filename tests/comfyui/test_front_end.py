"""The example workflows in ComfyUI's own web front end (the comfyui-frontend-package version the tested ComfyUI
pins), driven in headless Chromium by Playwright: every node type is known, and the front end turns each UI file
into exactly the API graph the other tests queue. The micro-world workflow is also queued from the page.

Needs Chromium (Debian's `chromium` package, or NPEDIT_CHROMIUM=/path/to/chrome) and the `playwright` Python
package (test extra); without either the module is skipped with the reason. NPEDIT_SCREENSHOTS=DIR keeps a
screenshot of each workflow there (docs/comfyui_microworld_edit.png is one).
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.comfyui.comfyui_env import Unavailable, front_end
from tests.comfyui.server import ComfyServer, http
from tests.workflow_format import WORKFLOWS, load, pairs

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
CHROMIUM = os.environ.get("NPEDIT_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium, or NPEDIT_CHROMIUM)")
# Chromium as root in a closed network: no sandbox, no GPU, no background connections.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page(comfyui, tiny_models, tmp_path_factory):
    from train_cli.comfyui_install import install

    tree, python = comfyui
    try:
        static = front_end(tree)
    except Unavailable as err:
        pytest.skip(f"no front end: {err}")
    work = tmp_path_factory.mktemp("comfyui-front-end")
    server = ComfyServer(tree, python, work, tiny_models[0], front_end=static)
    server.start()
    (work / "base" / "models").mkdir(exist_ok=True)
    install(work / "base", log=lambda *_: None)  # the micro-world models, scene and workflow
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            tab = browser.new_page(viewport={"width": 1700, "height": 1300})
            tab.errors = []
            tab.on("pageerror", lambda err: tab.errors.append(str(err)))
            # A returning user's settings: no template browser on the first visit; node text drawn at any zoom.
            settings = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1}
            for key, value in settings.items():
                assert http("POST", f"{server.url}/settings/{key}", value).ok
            tab.goto(server.url)
            tab.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            tab.server = server
            yield tab
            browser.close()
    finally:
        server.stop()


def api_graph(output: dict) -> dict:
    """The front end's queued prompt without its display-only `_meta`, as our API files hold it."""
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in output.items()}


def open_workflow(page, ui: dict) -> dict:
    """Load a UI file as a user dropping it would; returns the front end's node types and API graph."""
    page.evaluate("async wf => { await window.app.loadGraphData(wf); }", ui)
    return page.evaluate("""async () => ({
        unknown: window.app.graph._nodes.map(n => n.type).filter(t => !(t in window.LiteGraph.registered_node_types)),
        api: (await window.app.graphToPrompt()).output })""")


def shoot(page, name: str) -> None:
    folder = os.environ.get("NPEDIT_SCREENSHOTS")
    if folder:
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        page.wait_for_timeout(500)
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"comfyui_{name}.png"))


@pytest.mark.parametrize("ui_path, api_path", pairs(), ids=lambda p: p.stem)
def test_front_end_opens_each_workflow_and_queues_its_api_copy(page, ui_path, api_path):
    got = open_workflow(page, load(ui_path))
    assert got["unknown"] == []
    assert api_graph(got["api"]) == load(api_path)
    assert page.errors == []
    shoot(page, ui_path.stem)


def test_micro_world_workflow_runs_from_the_page(page):
    open_workflow(page, load(WORKFLOWS / "microworld_edit.json"))
    before = set(page.server.get("/history").json())
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    deadline = time.time() + 300
    while time.time() < deadline and not set(page.server.get("/history").json()) - before:
        time.sleep(0.5)
    (prompt_id,) = set(page.server.get("/history").json()) - before
    entry = page.server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", json.dumps(entry)[:2000]
    report = entry["outputs"]["7"]["text"][0]
    assert "make the red triangle purple" in report
    page.wait_for_function("() => (window.app.graph.getNodeById(7).widgets || []).some(w => w.name === 'npedit_report')")
    # The scorer's report is on the node (nodes/web/npedit_report.js), and neither queued nor saved with the workflow.
    shown = page.evaluate("() => window.app.graph.getNodeById(7).widgets.filter(w => w.name === 'npedit_report')"
                          ".map(w => w.value)")
    assert shown == [report]
    again = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert api_graph(again) == load(WORKFLOWS / "api" / "microworld_edit.json")
    saved = page.evaluate("() => window.app.graph.serialize().nodes.find(n => n.id === 7).widgets_values")
    assert saved == next(n for n in load(WORKFLOWS / "microworld_edit.json")["nodes"] if n["id"] == 7)["widgets_values"]
    page.wait_for_timeout(1500)  # the Save Image node shows its picture
    assert page.errors == []
    shoot(page, "microworld_edit_run")
