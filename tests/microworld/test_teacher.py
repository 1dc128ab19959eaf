"""The teacher's one command writes a FLUX.2-klein folder that the ordinary loader reads, with no machine path."""

from __future__ import annotations

import json

from npedit_core.backbones.flux2_klein import Flux2KleinBackbone
from npedit_core.microworld.autoencoder import build as build_autoencoder
from npedit_core.microworld.teacher import build


def test_build_writes_a_folder_that_loads_and_records_its_scene_accuracy(tmp_path):
    quiet = lambda *a: None  # noqa: E731
    build_autoencoder(tmp_path / "vae", steps=1, width=8, batch=2, n_data=4, log=quiet)
    report = build(tmp_path / "teacher", steps=2, n_data=8, vae_from=tmp_path / "vae", log=quiet)
    folder = tmp_path / "teacher"
    backbone = Flux2KleinBackbone.from_pretrained(str(folder))
    assert backbone.vae is not None and report["scene_accuracy"]["n"] == 100
    assert json.loads((folder / "train_log.json").read_text())["scene_accuracy"] == report["scene_accuracy"]
    for config in folder.rglob("*.json"):  # shipped folders must not carry the path they were built in
        assert str(tmp_path) not in config.read_text(), config
