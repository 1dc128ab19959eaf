"""Distilled bases are recognised from their files and names; check-config and train say so."""

import json

import pytest

from npedit_core.config import ModelConfig
from npedit_core.distilled import distilled_evidence
from train_cli.cli import main as cli_main


def folder(tmp_path, name, index=None, scheduler=None):
    path = tmp_path / name
    (path / "scheduler").mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps(index or {}))
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler or {}))
    return path


@pytest.mark.parametrize("name, backbone, index, scheduler, evidence", [
    ("my-klein", "flux2_klein", {"_class_name": "Flux2KleinPipeline", "is_distilled": True}, None, "is_distilled: true"),
    ("FLUX.2-klein-4B", "flux2_klein", {"_class_name": "Flux2KleinPipeline"}, None, "klein-base"),
    ("zimg", "z_image", {"_class_name": "ZImagePipeline"}, {"shift": 3.0}, "shift 3.0"),
    ("Z-Image-Turbo", "z_image", {}, {"shift": 6.0}, "'turbo'"),
])
def test_distilled_checkpoints_are_named(tmp_path, name, backbone, index, scheduler, evidence):
    path = folder(tmp_path, name, index, scheduler)
    assert evidence in distilled_evidence(ModelConfig(backbone=backbone, path=str(path)))


@pytest.mark.parametrize("name, backbone, index, scheduler", [
    ("FLUX.2-klein-base-4B", "flux2_klein", {"_class_name": "Flux2KleinPipeline", "is_distilled": False}, None),
    ("Z-Image", "z_image", {"_class_name": "ZImagePipeline"}, {"shift": 6.0}),
    ("my_finetune", "flux2_klein", {}, None),
])
def test_undistilled_bases_pass(tmp_path, name, backbone, index, scheduler):
    assert distilled_evidence(ModelConfig(backbone=backbone, path=str(folder(tmp_path, name, index, scheduler)))) is None


def test_single_files_by_name(tmp_path):
    assert distilled_evidence(ModelConfig("flux2_klein", str(tmp_path / "flux-2-klein-9b.safetensors")))
    assert distilled_evidence(ModelConfig("z_image", str(tmp_path / "z_image_turbo_bf16.safetensors")))
    assert distilled_evidence(ModelConfig("flux2_klein", str(tmp_path / "flux-2-klein-base-4b.safetensors"))) is None
    assert distilled_evidence(ModelConfig("z_image", str(tmp_path / "z_image_bf16.safetensors"))) is None


def test_check_config_warns_on_a_distilled_base(tmp_path, capsys):
    path = folder(tmp_path, "FLUX.2-klein-4B", {"_class_name": "Flux2KleinPipeline", "is_distilled": True})
    assert cli_main(["check-config", f"model.path={path}"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: model.path") and "FLUX.2-klein-base-4B" in err[0]
    assert cli_main(["check-config", f"model.path={folder(tmp_path, 'FLUX.2-klein-base-4B')}"]) == 0
    assert capsys.readouterr().err == ""


def test_train_warns_before_it_loads_anything(tmp_path, capsys):
    path = folder(tmp_path, "Z-Image-Turbo", {"_class_name": "ZImagePipeline"}, {"shift": 3.0})
    code = cli_main(["train", "model.backbone=z_image", f"model.path={path}", f"train.run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2  # the folder has no weights: the load fails, after the warning
    assert err.splitlines()[0].startswith("warning: model.path") and "shift 3.0" in err
