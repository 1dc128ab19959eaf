"""The pack inside a real ComfyUI: registration, /object_info, the template browser, validation (HTTP 400)."""

import copy

import pytest

from tests.comfyui.graphs import localize
from tests.comfyui.server import PACK_NAME
from tests.workflow_format import CORE_NODES, WORKFLOWS, load, pairs, ui_to_api

INPUTS = {
    "NPEditLoadEditor": ["family", "model", "text_encoder", "vae", "tokenizer", "dtype", "weights", "preview_decoder"],
    "NPEditLoadJudge": ["model", "family", "dtype"],
    "NPEditLoadCritic": ["family", "model", "text_encoder", "vae", "tokenizer", "dtype", "fake_weights"],
    "NPEditSampler": ["editor", "image", "instruction", "seed", "steps", "mask"],
    "NPEditVLMScore": ["judge", "reference", "edited", "instruction", "edit_type", "object"],
    "NPEditDMDCritic": ["critic", "image", "caption", "seed", "guidance", "positive", "negative"],
    "NPEditSelectBest": ["judge", "reference", "candidates", "instruction", "edit_type", "object"],
    "NPEditRefine": ["critic", "reference", "edited", "instruction", "edit_type", "object", "caption", "steps", "lr",
                     "w_vlm", "w_dmd", "seed", "judge", "mask", "positive", "negative"],
    "NPEditSigmas": ["steps", "shift"],
    "NPEditStepSampler": ["step", "eta"],
    "NPEditZImageReference": ["model", "reference"],
    "NPEditCriticFromModel": ["model", "vae", "fake_weights"],
}


def test_object_info_lists_every_node_with_its_inputs(server, object_info):
    assert set(INPUTS) <= set(object_info), server.log()[-3000:]
    assert {name for name in object_info if name.startswith("NPEdit")} == set(INPUTS)
    for name in INPUTS:
        node = object_info[name]
        order = node["input_order"]
        assert order["required"] + order.get("optional", []) == INPUTS[name], name
        assert node["category"].startswith("NP-Edit/") and node["python_module"].endswith(PACK_NAME)
        for group in ("required", "optional"):
            for key, spec in node["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{key}"


def test_core_node_table_matches_this_comfyui(object_info):
    for name, expected in CORE_NODES.items():
        real = object_info[name]
        assert real["input_order"]["required"] == expected["input_order"]["required"], name
        assert real["output"] == expected["output"], name
        for key, spec in expected["input"]["required"].items():
            real_spec = real["input"]["required"][key]
            assert (real_spec[0] == spec[0]) or (isinstance(spec[0], list) and isinstance(real_spec[0], list)), name
            options = spec[1] if len(spec) > 1 else {}
            real_options = real_spec[1] if len(real_spec) > 1 else {}
            for flag in ("image_upload", "control_after_generate", "forceInput"):
                assert options.get(flag) == real_options.get(flag), f"{name}.{key}.{flag}"


@pytest.mark.parametrize("ui_path, api_path", pairs(), ids=lambda p: p.stem)
def test_ui_workflows_queue_their_api_copies_with_this_comfyuis_node_definitions(object_info, ui_path, api_path):
    assert ui_to_api(load(ui_path), object_info) == load(api_path)


def test_template_browser_lists_and_serves_the_workflows(server):
    """ComfyUI 0.3.75 serves a pack's `workflows/` folder as templates (one of its accepted folder names)."""
    listed = server.get("/workflow_templates").json()
    assert sorted(listed[PACK_NAME]) == sorted(ui.stem for ui, _ in pairs())
    for ui_path, _ in pairs():
        served = server.get(f"/api/workflow_templates/{PACK_NAME}/{ui_path.name}")
        assert served.status_code == 200 and served.content == (WORKFLOWS / ui_path.name).read_bytes()


def _errors(response) -> str:
    assert response.status_code == 400, response.text[:2000]
    return response.text


def test_bad_inputs_get_http_400_naming_the_input(server, tiny_models):
    graph = localize(load(WORKFLOWS / "api" / "edit.json"), tiny_models[1])
    cases = [("3", "steps", 0, "steps"), ("3", "instruction", "   ", "instruction: empty"),
             ("2", "model", "no-such-model/", "model: 'no-such-model/' is not available"),
             ("2", "dtype", "float8", "dtype: 'float8'")]
    for node, key, value, expected in cases:
        bad = copy.deepcopy(graph)
        bad[node]["inputs"][key] = value
        text = _errors(server.submit(bad))
        assert expected in text, (key, text[:2000])
    missing = copy.deepcopy(graph)
    del missing["3"]["inputs"]["editor"]
    assert "editor" in _errors(server.submit(missing))


def test_a_missing_judge_drops_the_score_and_the_edit_still_runs(server, tiny_models):
    """What docs/comfyui.md says ComfyUI does with a bad input at queue time: the outputs that do not need the bad
    node run (the edit is saved), the rest are dropped, and the error is reported for the bad node."""
    graph = localize(load(WORKFLOWS / "api" / "edit_score.json"), tiny_models[1])
    graph["5"]["inputs"]["model"] = "no-such-judge/"
    response = server.submit(graph)
    assert response.status_code == 200, response.text[:2000]
    body = response.json()
    assert set(body["node_errors"]) == {"5"} and body["node_errors"]["5"]["dependent_outputs"] == ["7"]
    assert all("model: 'no-such-judge/' is not available" in e["details"] for e in body["node_errors"]["5"]["errors"])
    entry = server.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "success" and set(entry["outputs"]) == {"4"}  # saved; no score
