"""`train_cli comfyui-install`: the shipped micro-world models and example land where ComfyUI looks, once."""

import numpy as np
import pytest
from PIL import Image

from npedit_core.microworld.editor import JUDGE_DIR, TEACHER_DIR, WEIGHTS, example
from npedit_core.microworld.world import render
from train_cli.cli import main


@pytest.fixture
def comfyui(tmp_path):
    for name in ("models", "custom_nodes"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_install_copies_models_scene_and_workflow(comfyui, capsys):
    assert main(["comfyui-install", str(comfyui)]) == 0
    ours = comfyui / "models" / "npedit" / "microworld"
    for folder, name in ((TEACHER_DIR, "teacher"), (JUDGE_DIR, "judge")):
        shipped = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
        assert sorted(p.relative_to(ours / name) for p in (ours / name).rglob("*") if p.is_file()) == shipped
        assert all((ours / name / p).read_bytes() == (folder / p).read_bytes() for p in shipped)
    editors = sorted(p.name for p in WEIGHTS.glob("*.safetensors"))
    assert editors and sorted(p.name for p in ours.glob("*.safetensors")) == editors
    scene = np.asarray(Image.open(comfyui / "input" / "npedit_microworld_scene.png")).astype(np.float32) / 255
    assert np.abs(scene - render(example()[0]).permute(1, 2, 0).numpy()).max() <= 0.501 / 255  # 8-bit rounding
    workflow = comfyui / "user" / "default" / "workflows" / "NP-Edit micro-world edit.json"
    assert workflow.is_file() and not list(comfyui.rglob("*.partial"))
    assert "file(s) written" in capsys.readouterr().out

    assert main(["comfyui-install", str(comfyui)]) == 0  # again: nothing to do
    assert "0 file(s) written" in capsys.readouterr().out


def test_install_never_replaces_a_different_file_unless_forced(comfyui, capsys):
    assert main(["comfyui-install", str(comfyui)]) == 0
    changed = comfyui / "models" / "npedit" / "microworld" / "judge" / "config.json"
    changed.write_text("{}")
    capsys.readouterr()
    assert main(["comfyui-install", str(comfyui)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "models/npedit/microworld/judge/config.json" in err and "--force" in err
    assert changed.read_text() == "{}"
    assert main(["comfyui-install", str(comfyui), "--force"]) == 0
    assert changed.read_bytes() == (JUDGE_DIR / "config.json").read_bytes()


def test_install_refuses_a_folder_that_is_not_a_comfyui(tmp_path, capsys):
    assert main(["comfyui-install", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a ComfyUI folder" in err
    assert list(tmp_path.iterdir()) == []
