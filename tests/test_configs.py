"""Every shipped config file resolves under the strict schema; the GPU recipes train on undistilled bases."""

from pathlib import Path

import pytest
import yaml

from npedit_core.config import load_config
from npedit_core.distilled import distilled_evidence

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(ROOT.glob("*.yaml"))
RECIPES = [p for p in CONFIGS if "model" in yaml.safe_load(p.read_text())]
OVERLAYS = [p for p in CONFIGS if p not in RECIPES]  # stage files layered on a recipe (-c recipe -c overlay)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_config_loads(path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    assert cfg.model.backbone == raw["model"]["backbone"]


def test_the_example_configs_exist():
    assert {p.name for p in CONFIGS} >= {"flux2_klein_qwen25vl_lora.yaml", "zimage_internvl3_full.yaml", "tiny_cpu.yaml",
                                         "warmup.yaml"}


@pytest.mark.parametrize("recipe", ["flux2_klein_qwen25vl_lora.yaml", "zimage_internvl3_full.yaml"])
def test_gpu_recipes_use_undistilled_bases(recipe):
    cfg = load_config(ROOT / recipe)
    assert cfg.model.path and distilled_evidence(cfg.model) is None, cfg.model.path
    assert cfg.train.stage == "npedit" and cfg.optim.schedule == "constant" and cfg.optim.grad_spike_threshold == 300


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
@pytest.mark.parametrize("recipe", ["flux2_klein_qwen25vl_lora.yaml", "zimage_internvl3_full.yaml"])
def test_overlays_layer_on_every_recipe(recipe, overlay):
    base, layered = load_config(ROOT / recipe), load_config([ROOT / recipe, overlay])
    assert layered.model == base.model and layered.judge == base.judge and layered.data == base.data
    assert layered.train.run_dir == base.train.run_dir  # sections merge key by key


def test_warmup_overlay_is_the_reimplementations_warmup():
    cfg = load_config([ROOT / "flux2_klein_qwen25vl_lora.yaml", ROOT / "warmup.yaml"])
    assert (cfg.train.stage, cfg.train.steps, cfg.train.text_dropout) == ("warmup", 5000, 0.0)
    o = cfg.optim
    assert (o.lr, o.schedule, o.warmup_steps, o.min_lr, o.betas, o.weight_decay) == (2e-5, "cosine", 1000, 1e-6, (0.9, 0.99), 0.01)
    assert (o.grad_spike_threshold, o.grad_spike_start_step, cfg.loss.warmup_times) == (100.0, 1000, "uniform")
