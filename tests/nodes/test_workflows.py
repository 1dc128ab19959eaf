"""The example workflows: UI files and API copies in sync, every node registered, every NP-Edit node used."""

import json

import pytest

from tests.nodes.fake_comfy import node_info
from tests.workflow_format import CORE_NODES, WORKFLOWS, api_to_ui, load, pairs, ui_to_api


@pytest.fixture(scope="module")
def object_info(pack):
    return {**CORE_NODES, **{info["name"]: info for info in map(node_info, pack.node_list)}}


def test_the_example_workflows_exist_in_both_formats():
    names = {ui.stem for ui, _ in pairs()}
    assert names == {"edit", "edit_score", "best_of_n", "edit_refine", "microworld_edit", "zimage_core_nodes_edit",
                     "core_editor_best_of_n", "zimage_core_refine"}
    assert {p.stem for p in WORKFLOWS.glob("*.json")} == names  # no UI file without its API copy


@pytest.mark.parametrize("ui_path, api_path", pairs(), ids=lambda p: p.stem)
def test_ui_file_queues_exactly_its_api_copy(object_info, ui_path, api_path):
    ui, api = load(ui_path), load(api_path)
    assert ui_to_api(ui, object_info) == api
    # And the UI file is what the generator writes (regenerate: python -m tests.workflow_format).
    assert json.loads(json.dumps(api_to_ui(api, object_info))) == ui


def test_every_node_is_registered_and_every_npedit_node_is_shown(pack, object_info):
    used = {node["class_type"] for _, api in pairs() for node in load(api).values()}
    assert used <= set(object_info), used - set(object_info)
    ours = {node_info(cls)["name"] for cls in pack.node_list}
    assert ours <= used, f"not in any example workflow: {ours - used}"
