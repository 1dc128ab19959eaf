"""The world's own autoencoder: one command builds a TAEF2-architecture pair that the ordinary loaders read."""

from __future__ import annotations

import json

import pytest
import torch

from npedit_core.backbones.taef2 import TAEF2
from npedit_core.microworld.autoencoder import build, main, shape_weights
from npedit_core.microworld.world import render_batch, sample_example


def test_shape_pixels_and_their_edges_weigh_more_than_the_background():
    image = render_batch([sample_example(5)[0]])
    w = shape_weights(image, 5.0)
    on_background = (image - image[..., :1, :1]).abs().amax(1, keepdim=True) < 1e-3
    assert w.shape == (1, 1, 64, 64)
    assert torch.all(w[~on_background] == 5.0)  # every shape pixel
    assert 0 < int((w[on_background] == 5.0).sum()) < int(on_background.sum()) // 4  # a rim, not the background
    assert torch.all(shape_weights(image, 1.0) == 1.0)


def test_build_writes_a_pair_that_taef2_loads_and_logs_the_round_trip(tmp_path):
    report = build(tmp_path, steps=2, decoder_steps=2, width=8, decoder_width=12, batch=2, n_data=8, log=lambda *a: None)
    taef2 = TAEF2.from_files(tmp_path)  # the safetensors pair, widths read from the weights
    assert taef2.encoder[0].weight.shape[0] == 8 and taef2.decoder[1].weight.shape[0] == 12
    logged = json.loads((tmp_path / "train_log.json").read_text())
    assert logged["held_out"] == report["held_out"]
    assert set(logged["held_out"]) >= {"psnr", "kept_pixels", "scene_ok", "shape_ok"}


def test_command_line_refuses_a_width_groupnorm_cannot_split(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--decoder-width", "10"])
    assert "multiples of 4" in capsys.readouterr().err
