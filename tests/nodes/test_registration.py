"""Registration and schemas: V3 only, public ids and categories, tooltips everywhere, defaults from config."""

import ast
import shutil
from pathlib import Path

from npedit_core.config import CriticConfig, LossConfig, ModelConfig, RefineConfig, SamplerConfig

from tests.nodes.fake_comfy import ComfyExtension, node_info

ROOT = Path(__file__).resolve().parents[2]
NODE_IDS = {
    "NPEditLoadEditor", "NPEditLoadJudge", "NPEditLoadCritic", "NPEditSampler",
    "NPEditVLMScore", "NPEditDMDCritic", "NPEditSelectBest", "NPEditRefine",
    "NPEditSigmas", "NPEditStepSampler", "NPEditZImageReference", "NPEditCriticFromModel",
}


def infos(pack) -> dict:
    return {info["name"]: info for info in map(node_info, pack.node_list)}


def test_entrypoint_registers_every_node_under_its_public_id(pack):
    assert isinstance(pack.extension, ComfyExtension)
    info = infos(pack)
    assert set(info) == NODE_IDS
    for name, node in info.items():
        assert node["category"].startswith("NP-Edit/"), name
        assert node["display_name"].startswith("NP-Edit "), name
        assert node["description"], name


def test_no_v1_mappings_anywhere():
    """ComfyUI takes NODE_CLASS_MAPPINGS first and then silently ignores comfy_entrypoint."""
    for path in [ROOT / "__init__.py", *(ROOT / "nodes").glob("*.py")]:
        names = {t.id for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
        assert not names & {"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"}, path


def test_every_input_has_a_tooltip(pack):
    for name, node in infos(pack).items():
        for group in node["input"].values():
            for key, (_, options) in group.items():
                assert options.get("tooltip"), f"{name}.{key} has no tooltip"


def test_node_defaults_come_from_the_config_schema(pack):
    info = infos(pack)
    required = {name: node["input"]["required"] for name, node in info.items()}
    assert required["NPEditSampler"]["steps"][1]["default"] == SamplerConfig().steps
    assert required["NPEditRefine"]["steps"][1]["default"] == RefineConfig().steps
    assert required["NPEditRefine"]["lr"][1]["default"] == RefineConfig().lr
    assert required["NPEditRefine"]["w_vlm"][1]["default"] == LossConfig().w_vlm
    assert required["NPEditRefine"]["w_dmd"][1]["default"] == LossConfig().w_dmd
    assert required["NPEditDMDCritic"]["guidance"][1]["default"] == CriticConfig().guidance
    assert required["NPEditLoadEditor"]["dtype"][1]["default"] == ModelConfig().dtype
    assert required["NPEditLoadEditor"]["family"][1]["default"] == ModelConfig().backbone


def test_seeds_state_their_control_widget_so_saved_workflows_are_unambiguous(pack):
    """The front end adds a control widget to INT inputs named 'seed' unless the schema says otherwise."""
    for name, node in infos(pack).items():
        for group in node["input"].values():
            if "seed" in group:
                assert "control_after_generate" in group["seed"][1], name
    assert infos(pack)["NPEditSampler"]["input"]["required"]["seed"][1]["control_after_generate"] is True


def test_optional_sockets_and_list_outputs(pack):
    info = infos(pack)
    assert set(info["NPEditSampler"]["input"]["optional"]) == {"mask"}
    assert set(info["NPEditRefine"]["input"]["optional"]) == {"judge", "mask", "positive", "negative"}
    assert set(info["NPEditDMDCritic"]["input"]["optional"]) == {"positive", "negative"}
    assert info["NPEditCriticFromModel"]["output"] == ["NPEDIT_CRITIC"]
    assert info["NPEditVLMScore"]["output_is_list"] == [True, True, False]
    assert info["NPEditDMDCritic"]["output_is_list"] == [True, False]
    assert info["NPEditSelectBest"]["output"] == ["IMAGE", "INT", "FLOAT", "STRING"]
    assert info["NPEditLoadEditor"]["output"] == ["NPEDIT_EDITOR"]
    assert info["NPEditSampler"]["input"]["required"]["editor"][0] == "NPEDIT_EDITOR"


def test_loader_combos_list_the_models_in_comfyui_folders(pack, models_dir):
    _, names = models_dir
    required = {name: node["input"]["required"] for name, node in infos(pack).items()}
    editor = required["NPEditLoadEditor"]
    assert editor["model"][0] == [names["zimage"], names["model"]]  # diffusers folders first, then single files
    assert names["text_encoder"] in editor["text_encoder"][0] and editor["text_encoder"][0][0] == "none"
    assert names["tokenizer"] in editor["tokenizer"][0]
    assert {names["zimage_editor"], names["flux2_editor"]} <= set(editor["weights"][0])
    assert required["NPEditLoadJudge"]["model"][0] == [names["judge"]]
    assert names["zimage_fake"] in required["NPEditLoadCritic"]["fake_weights"][0]


def test_core_imports_itself_relatively():
    """Inside ComfyUI the core is `<pack>.npedit_core`, not a top-level package: absolute self-imports would fail."""
    for path in (ROOT / "npedit_core").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            assert not stripped.startswith(("from npedit_core", "import npedit_core")), f"{path.relative_to(ROOT)}:{number}"


def test_menus_list_the_shipped_teacher_whole_and_only_preview_decoders(pack, models_dir):
    """A FLUX.2-klein folder without model_index.json (the micro-world teacher) is one model in the model menu;
    its parts never reach the judge menu; vae_approx's encoders and other families' decoders are not offered."""
    from npedit_core.microworld.editor import TEACHER_DIR

    models, _ = models_dir
    teacher = models / "npedit" / "microworld" / "teacher"
    approx = models / "vae_approx"
    extra = [approx / "taef2_encoder.pth", approx / "taesd_decoder.pth", approx / "taef2_decoder.safetensors",
             models / "loras" / "step-00000100.pt"]  # a training checkpoint dropped among the LoRAs
    shutil.copytree(TEACHER_DIR, teacher)
    approx.mkdir(exist_ok=True)
    for path in extra:
        path.write_bytes(b"")
    try:
        required = {name: node["input"]["required"] for name, node in infos(pack).items()}
        assert "microworld/teacher/" in required["NPEditLoadEditor"]["model"][0]
        assert "microworld/teacher/" in required["NPEditLoadCritic"]["model"][0]
        assert not [m for m in required["NPEditLoadJudge"]["model"][0] if m.startswith("microworld/")]
        previews = required["NPEditLoadEditor"]["preview_decoder"][0]
        assert "taef2_decoder.safetensors" in previews
        assert not {"taef2_encoder.pth", "taesd_decoder.pth"} & set(previews)
        assert "step-00000100.pt" not in required["NPEditLoadEditor"]["weights"][0]
    finally:
        shutil.rmtree(teacher.parent)
        for path in extra:
            path.unlink()
