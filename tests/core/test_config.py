"""The config schema: defaults, YAML file, key.sub=value overrides, strict errors."""

import pytest

from npedit_core.config import NPEditConfig, load_config, save_config, to_dict
from npedit_core.errors import NPEditError


def test_defaults_are_the_reimplementations_recipe():
    cfg = NPEditConfig()
    assert (cfg.loss.w_vlm, cfg.loss.w_dmd, cfg.loss.fake_updates) == (0.02, 1.0, 5)
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.grad_clip) == (2e-5, (0.0, 0.9), 2.0)
    assert (cfg.sampler.steps, cfg.sampler.shift) == (4, 6.0)


def test_file_then_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  w_vlm: 0.05\noptim:\n  betas: [0.1, 0.99]\ntrain:\n  steps: 10\n")
    cfg = load_config(path, ["train.steps=20", "judge.family=internvl", "model.path=/models/klein", "lora.rank=8"])
    assert cfg.loss.w_vlm == 0.05 and cfg.optim.betas == (0.1, 0.99)
    assert cfg.train.steps == 20 and cfg.judge.family == "internvl" and cfg.lora.rank == 8
    assert cfg.model.path == "/models/klein"
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    save_config(cfg, tmp_path / "resolved.yaml")
    assert to_dict(load_config(tmp_path / "resolved.yaml")) == to_dict(cfg)


def test_nested_question_templates_are_configurable():
    cfg = load_config(None, ["judge.questions.per_type={color_edit: 'Is it {instruction}?'}"])
    assert cfg.judge.questions.template("color", "edit") == "Is it {instruction}?"


@pytest.mark.parametrize(
    "override, match",
    [
        ("loss.w_vml=1", r"unknown config key 'loss.w_vml'; did you mean 'loss.w_vlm'\?"),
        ("trian.steps=3", r"did you mean 'train'\?"),
        ("train.steps=ten", r"config train.steps: expected an integer, got 'ten'"),
        ("model.backbone=flux3", r"config model.backbone: 'flux3' is not one of"),
        ("optim.betas=[0.1]", r"expected 2 values"),
        ("lora.enabled=maybe", r"expected true or false"),
        ("optim.lr=fast", r"config optim.lr: expected a number, got 'fast'"),
        ("train.steps", r"expected key.sub=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, match):
    with pytest.raises(NPEditError, match=match):
        load_config(None, [override])


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(NPEditError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(NPEditError, match="bad.yaml: not valid YAML"):
        load_config(bad)
