"""The example workflows run end to end in a real ComfyUI on the CPU; errors, Cancel and caching behave.

The edit workflow runs on the FLUX.2-klein single files, the others on the Z-Image folder (`localize`).
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.comfyui.conftest import PHOTO_SIZE
from tests.comfyui.graphs import localize
from tests.comfyui.server import dump, messages
from tests.workflow_format import WORKFLOWS, load

EXPECTED_TEXT = {"edit_score": "7", "best_of_n": "7", "edit_refine": "10"}  # nodes that show a report


def saved_images(server, entry: dict) -> list:
    files = [server.output_path(image) for out in entry["outputs"].values() for image in out.get("images", [])
             if image["type"] == "output"]
    return [Image.open(path) for path in files]


@pytest.mark.parametrize("name", ["edit", "edit_score", "best_of_n", "edit_refine"])
def test_example_workflow_runs_and_keeps_the_input_size(server, tiny_models, name):
    family = "flux2_klein" if name == "edit" else "z_image"
    entry = server.run(localize(load(WORKFLOWS / "api" / f"{name}.json"), tiny_models[1], family))
    assert entry["status"]["status_str"] == "success", dump(entry) + server.log()[-3000:]
    images = saved_images(server, entry)
    assert len(images) == 1 and images[0].size == PHOTO_SIZE and images[0].mode == "RGB"
    if name in EXPECTED_TEXT:
        report = entry["outputs"][EXPECTED_TEXT[name]]["text"][0]
        assert report.startswith("#0" if name != "best_of_n" else "best: #")
    if name == "best_of_n":
        assert len(entry["outputs"][EXPECTED_TEXT[name]]["text"][0].splitlines()) == 1 + 4  # all four scored


def test_microworld_workflow_runs_as_shipped_after_comfyui_install(server):
    """`train_cli comfyui-install` into the server's folders, then the example exactly as shipped: the menus list
    the shipped models, the edit is the right one by the world's oracle, and the judge's report says so."""
    import numpy as np
    import torch

    from npedit_core.microworld.editor import example
    from npedit_core.microworld.oracle import score
    from train_cli.comfyui_install import install

    base = server.work / "base"
    (base / "models").mkdir(exist_ok=True)
    install(base, log=lambda *_: None)
    graph = load(WORKFLOWS / "api" / "microworld_edit.json")
    menus = server.object_info()["NPEditLoadEditor"]["input"]["required"]  # V3 combos: ["COMBO", {"options": [...]}]
    assert graph["2"]["inputs"]["model"] in menus["model"][1]["options"]
    assert graph["2"]["inputs"]["weights"] in menus["weights"][1]["options"]
    start = time.time()
    entry = server.run(graph)
    seconds = time.time() - start
    assert entry["status"]["status_str"] == "success", dump(entry) + server.log()[-3000:]
    (image,) = saved_images(server, entry)
    scene, edit = example()
    assert graph["6"]["inputs"]["value"] == edit.instruction and graph["7"]["inputs"]["edit_type"] == edit.edit_type
    out = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    verdict = score(out, scene, edit)
    assert verdict["success"], verdict
    report = entry["outputs"]["7"]["text"][0]
    print(f"micro-world workflow: {seconds:.1f} s; oracle {verdict}; judge: {report}")


def test_a_repeated_prompt_is_served_from_cache(server, tiny_models):
    graph = localize(load(WORKFLOWS / "api" / "edit_score.json"), tiny_models[1])
    first = server.run(graph)
    start = time.time()
    second = server.run(graph)
    assert second["status"]["status_str"] == "success"
    cached = messages(second, "execution_cached")
    assert cached and set(cached[0]["nodes"]) == set(graph), dump(second)
    assert second["outputs"]["7"] == first["outputs"]["7"]
    assert time.time() - start < 10


def test_a_runtime_error_names_the_input(server, tiny_models):
    graph = localize(load(WORKFLOWS / "api" / "edit.json"), tiny_models[1])
    graph["9"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    graph["3"]["inputs"]["mask"] = ["9", 0]
    entry = server.run(graph)
    errors = messages(entry, "execution_error")
    assert entry["status"]["status_str"] == "error" and errors, dump(entry)
    assert errors[0]["node_type"] == "NPEditSampler"
    assert "mask: size (64, 64) does not match the image size (45, 67)" in errors[0]["exception_message"]


def test_interrupt_stops_a_long_sampler_run(server, tiny_models):
    graph = localize(load(WORKFLOWS / "api" / "edit.json"), tiny_models[1])
    graph["3"]["inputs"]["steps"] = 1
    assert server.run(graph)["status"]["status_str"] == "success"  # the loader's output is now cached
    graph["8"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 16}}
    graph["3"]["inputs"].update(image=["8", 0], steps=1000)  # minutes of work on this CPU
    response = server.submit(graph)
    assert response.status_code == 200, response.text
    prompt_id = response.json()["prompt_id"]
    deadline = time.time() + 60
    while not server.running() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # well inside the sampler's 1000 steps
    asked = time.time()
    server.interrupt()
    entry = server.wait(prompt_id, timeout=120)
    stopped_after = time.time() - asked
    interrupted = messages(entry, "execution_interrupted")
    assert entry["status"]["status_str"] == "error" and interrupted, dump(entry)
    assert interrupted[0]["node_type"] == "NPEditSampler"
    assert stopped_after < 15, f"took {stopped_after:.1f} s to stop"
    graph["3"]["inputs"].update(image=["1", 0], steps=2)  # and the server carries on
    assert server.run(graph)["status"]["status_str"] == "success"


def test_progress_and_previews_reach_the_websocket_every_step(server, tiny_models, tmp_path):
    names = tiny_models[1]
    if "taef2" not in names:
        pytest.skip("TAEF2 weights not found in the shared assets")
    graph = localize(load(WORKFLOWS / "api" / "edit.json"), names, "flux2_klein")
    graph["2"]["inputs"]["preview_decoder"] = names["taef2"]
    graph["3"]["inputs"].update(steps=3, seed=7)
    (tmp_path / "graph.json").write_text(json.dumps(graph))
    listener = Path(__file__).with_name("ws_listen.py")
    subprocess.run([str(server.python), str(listener), server.url, str(tmp_path / "graph.json"), str(tmp_path / "ws.json")],
                   check=True, timeout=300)
    record = json.loads((tmp_path / "ws.json").read_text())
    assert record["finished"], record
    sampler = [(p["value"], p["max"]) for p in record["progress"] if p["node"] == "3"]
    assert sampler == [(1, 3), (2, 3), (3, 3)]
    assert len(record["previews"]) == 3  # one decoded x0 estimate per step (TAEF2), 48x64 shown at most 512 px
    assert all(w * 48 == h * 64 for w, h in record["previews"])
