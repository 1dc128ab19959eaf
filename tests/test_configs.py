"""Every shipped config file resolves under the strict schema."""

from pathlib import Path

import pytest
import yaml

from npedit_core.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    assert cfg.model.backbone == raw["model"]["backbone"]


def test_the_three_example_configs_exist():
    assert {p.name for p in CONFIGS} >= {"flux2_klein_qwen25vl_lora.yaml", "zimage_internvl3_full.yaml", "tiny_cpu.yaml"}
