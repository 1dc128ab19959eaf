"""The re-implementation's recipe details: lr schedule, warm-up times, spike guard, do-nothing weight, text dropout."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR

from npedit_core.config import OptimConfig
from npedit_core.losses import warmup_times
from npedit_core.trainer import Trainer, learning_rate
from tests.core.test_trainer import config, manifest, quiet  # noqa: F401  (manifest is a fixture)


def reimplementation_lrs(max_lr, min_lr, warmup_steps, total_steps, n):
    """A port of the re-implementation's LinearWarmupCosineDecayScheduler (utils/lr.py): the lr of each of n steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    warmup = LinearLR(opt, start_factor=1e-8, end_factor=1.0, total_iters=warmup_steps)
    cosine = CosineAnnealingLR(opt, T_max=total_steps - warmup_steps, eta_min=min_lr)
    fixed = LambdaLR(opt, lr_lambda=lambda epoch: min_lr / max_lr)
    sched = SequentialLR(opt, schedulers=[warmup, cosine, fixed], milestones=[warmup_steps, total_steps])
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_cosine_schedule_matches_the_reimplementations():
    o = OptimConfig(lr=2e-5, schedule="cosine", warmup_steps=100, min_lr=1e-6)
    expected = reimplementation_lrs(2e-5, 1e-6, 100, 500, 520)
    got = [o.lr * learning_rate(step, o, 500) for step in range(520)]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-12)
    assert learning_rate(0, o, 500) < 1e-7 and learning_rate(300, OptimConfig(), 500) == 1.0  # default: constant


def test_warmup_times_are_the_reimplementations():
    g = torch.Generator().manual_seed(0)
    t, weight = warmup_times(10_000, 6.0, "uniform", generator=g)
    u = torch.rand(10_000, generator=torch.Generator().manual_seed(0))  # its TimeSampler: U(0, 1)
    shifted = 6.0 * u / (1 + 5.0 * u)  # its TimeWarper, linear shift 6
    torch.testing.assert_close(t, shifted)
    s = shifted.clamp(1e-6, 1 - 1e-6)  # its TimeWeighter: logit_normal_pdf(t, 0, 1)
    pdf = torch.exp(-torch.log(s * (1 - s)) - 0.5 * torch.log(torch.tensor(2 * torch.pi)) - 0.5 * torch.log(s / (1 - s)) ** 2)
    torch.testing.assert_close(weight, pdf)
    assert weight.max() < 5 and t.mean() > 0.75  # shift 6 pushes times to the noise end


def test_a_gradient_spike_skips_the_update_and_says_why(tmp_path, manifest):  # noqa: F811
    messages = []
    trainer = Trainer(config(tmp_path, manifest, "train.steps=1", "loss.fake_updates=0",
                             "optim.grad_spike_threshold=1e-12"), log=messages.append)
    before = trainer.roles.editor_state_dict()
    logs = trainer.train_step()
    assert logs["skipped"] == 1 and logs["spike"] == 1 and logs["grad_norm"] > 1e-12
    assert all(torch.equal(before[k], v) for k, v in trainer.roles.editor_state_dict().items())
    assert any("optim.grad_spike_threshold" in m for m in messages)
    trainer.cfg.optim.grad_spike_start_step = 5  # not yet armed at step 1
    logs = trainer.train_step()
    assert "skipped" not in logs
    assert any(not torch.equal(before[k], v) for k, v in trainer.roles.editor_state_dict().items())


@pytest.fixture(scope="module")
def square_manifest(tmp_path_factory):
    """Six same-size images: one aspect bucket, so batches are as large as train.batch_size."""
    folder = tmp_path_factory.mktemp("square")
    rows = []
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "instruction": "make it red", "edit_type": "color",
                                "edited_caption": "a red thing", "source_caption": "a thing"}))
    (folder / "m.jsonl").write_text("\n".join(rows) + "\n")
    return folder / "m.jsonl"


@pytest.mark.parametrize("batch_size", [2, 3])
def test_the_do_nothing_term_weighs_each_sample_one_over_the_batch(tmp_path, square_manifest, batch_size):
    trainer = Trainer(config(tmp_path, square_manifest, f"train.batch_size={batch_size}", "loss.do_nothing_prob=0.5",
                             "loss.w_vlm=0", "loss.w_dmd=0"), log=quiet)
    for seed in range(50):  # a seed whose draws mix do-nothing and edit rows
        random.seed(seed)
        idle = sum(random.random() < 0.5 for _ in range(batch_size))
        if 0 < idle < batch_size:
            break
    batch = trainer.next_batch()
    assert len(batch["instructions"]) == batch_size
    random.seed(seed)
    loss, logs = trainer.editor_losses(batch)
    assert loss.item() == pytest.approx(idle / batch_size * logs["do_nothing_loss"], rel=1e-5)


def test_text_dropout_empties_the_editors_text(tmp_path, manifest):  # noqa: F811
    trainer = Trainer(config(tmp_path, manifest, "train.stage=warmup", "train.text_dropout=1.0"), log=quiet)
    trainer.editor_losses(trainer.next_batch())
    assert list(trainer.text.items) == [""]
    trainer = Trainer(config(tmp_path / "b", manifest, "train.stage=warmup"), log=quiet)
    trainer.editor_losses(trainer.next_batch())
    assert "" not in trainer.text.items
