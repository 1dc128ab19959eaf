"""The trainer on tiny real-class models: resume equality, atomic saves, Ctrl-C, skips, export -> edit."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from npedit_core import checkpoint as ckpt_module
from npedit_core.checkpoint import latest_checkpoint, load_checkpoint
from npedit_core.config import load_config
from npedit_core.editing import edit_files
from npedit_core.errors import CheckpointError, NPEditError
from npedit_core.export import export_checkpoint, load_editor
from npedit_core.backbones.z_image import ZImageBackbone
from npedit_core.trainer import Trainer
from train_cli.cli import main as cli_main


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = [
        ("a.png", (48, 64), "make the square red", "color", None),
        ("b.png", (64, 48), "remove the ball", "remove", "ball"),
        ("c.png", (64, 64), "add a hat", "add", None),
    ]
    with open(folder / "m.jsonl", "w") as handle:
        for name, (h, w), instruction, kind, obj in rows:
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
            row = {"image": name, "instruction": instruction, "edit_type": kind, "edited_caption": f"after {name}",
                   "source_caption": f"photo {name}"}
            if obj:
                row["object"] = obj
            handle.write(json.dumps(row) + "\n")
    return folder / "m.jsonl"


def config(run_dir, manifest, *extra):
    return load_config(None, [
        "model.backbone=z_image", "model.dtype=float32", "judge.dtype=float32", "data.resolution=32",
        f"data.manifest={manifest}", f"train.run_dir={run_dir}", "train.save_every=2", "train.preview_every=0",
        "train.gradient_checkpointing=false", "train.log_every=1", "loss.fake_updates=1", "lora.rank=4", "lora.alpha=4",
        "optim.lr=1e-3", "optim.fake_lr=1e-3", "loss.do_nothing_prob=0.3", *extra,
    ])


def quiet(*_):
    pass


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, manifest):
    straight = Trainer(config(tmp_path / "a", manifest, "train.steps=4"), log=quiet)
    straight.run()
    Trainer(config(tmp_path / "b", manifest, "train.steps=2"), log=quiet).run()  # "killed" after step 2
    resumed = Trainer(config(tmp_path / "b", manifest, "train.steps=4"), log=quiet)
    assert resumed.step == 2
    resumed.run()
    for role in ("editor_state_dict", "fake_state_dict"):
        a, b = getattr(straight.roles, role)(), getattr(resumed.roles, role)()
        assert a.keys() == b.keys()
        moved = max((a[k] - load_checkpoint(tmp_path / "b/checkpoints/step-00000002.pt")[role[:-11]][k]).abs().max() for k in a)
        assert moved > 0  # steps 3-4 changed the weights, so equality below is not trivial
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), role
    metrics = [json.loads(line) for line in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert {"vlm_loss", "dmd_loss", "fake_loss", "p_yes_edit", "p_yes_identity", "grad_norm"} <= set().union(*metrics)


def test_an_interrupted_save_never_replaces_the_last_good_checkpoint(tmp_path, monkeypatch):
    good = ckpt_module.save_checkpoint(tmp_path, 1, {"w": torch.ones(3)})

    def dying_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_module.save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)})
    assert latest_checkpoint(tmp_path) == good
    assert torch.equal(load_checkpoint(good)["w"], torch.ones(3))
    assert not (tmp_path / "checkpoints/step-00000002.pt").exists()


def test_ctrl_c_finishes_the_step_saves_and_stops(tmp_path, manifest):
    trainer = Trainer(config(tmp_path, manifest, "train.steps=50", "train.save_every=100"), log=quiet)
    step = trainer.train_step

    def step_then_ctrl_c():
        logs = step()
        os.kill(os.getpid(), signal.SIGINT)
        return logs

    trainer.train_step = step_then_ctrl_c
    trainer.run()
    assert trainer.step == 1
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_a_non_finite_loss_is_skipped_and_never_reaches_the_weights(tmp_path, manifest):
    trainer = Trainer(config(tmp_path, manifest, "train.steps=1", "loss.fake_updates=0"), log=quiet)
    before = trainer.roles.editor_state_dict()
    trainer.editor_losses = lambda batch: (torch.tensor(float("nan"), requires_grad=True), {})
    logs = trainer.train_step()
    assert logs["skipped"] == 1
    after = trainer.roles.editor_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_warmup_t2i_share_trains_part_of_each_batch_without_the_reference(tmp_path, manifest, monkeypatch):
    """`loss.warmup_t2i_share` reaches the editor on the shipped one-GPU path (LoRA, gradient checkpointing)."""
    cfg = config(tmp_path / "w", manifest, "train.stage=warmup", "train.steps=2", "train.batch_size=2",
                 "train.gradient_checkpointing=true", "loss.warmup_t2i_share=0.5")
    trainer = Trainer(cfg, log=quiet)
    assert trainer.cfg.lora.enabled
    seen, editor = [], trainer.roles.editor

    def spy(x_t, t, text, reference):
        seen.append(None if reference is None else reference.shape[0])
        return editor(x_t, t, text, reference)

    monkeypatch.setattr(trainer.roles, "editor", spy)
    before = [p.detach().clone() for p in trainer.roles.editor_parameters()]
    trainer.run()
    # A batch of 2 (batches follow aspect buckets, so one may hold a single row): one row drawn from its
    # caption alone, then the other copied; round(0.5 x 1) = 0 rows of a single-row batch.
    assert None in seen and all(seen[i + 1] == 1 for i, r in enumerate(seen) if r is None), seen
    logs = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [x["warmup_t2i_loss"] > 0 for x in logs if "warmup_t2i_loss" in x] == [True] * seen.count(None)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.roles.editor_parameters()))


def test_warmup_then_npedit_then_export_then_edit(tmp_path, manifest):
    Trainer(config(tmp_path / "warm", manifest, "train.stage=warmup", "train.steps=2"), log=quiet).run()
    main = config(tmp_path / "np", manifest, "train.steps=2", f"train.init_from={tmp_path / 'warm'}")
    trainer = Trainer(main, log=quiet)
    assert torch.equal(trainer.roles.editor_parameters()[0], load_checkpoint(latest_checkpoint(tmp_path / "warm"))["editor"][
        next(iter(trainer.roles.editor_state_dict()))])
    trainer.run()
    out = export_checkpoint(tmp_path / "np", tmp_path / "editor.safetensors")
    written = edit_files([str(manifest.parent / "a.png")], ["make the square red"], str(tmp_path / "edits"),
                         editor=str(out), overrides=["model.backbone=z_image", "model.dtype=float32"])
    assert Image.open(written[0]).size == (64, 48)  # the input's own size
    comfy_out = tmp_path / "editor_comfyui.safetensors"
    assert cli_main(["export", str(tmp_path / "np"), "-o", str(comfy_out), "--layout", "comfyui"]) == 0
    from safetensors.torch import load_file

    keys = load_file(str(comfy_out))
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    with pytest.raises(CheckpointError, match="ComfyUI-layout LoRA"):
        load_editor(ZImageBackbone.tiny(), comfy_out)
    # Warm-up checkpoints cannot silently continue as an npedit run in the same directory.
    with pytest.raises(NPEditError, match="is a 'warmup' checkpoint"):
        Trainer(config(tmp_path / "warm", manifest), log=quiet)
    from npedit_core.backbones.flux2_klein import Flux2KleinBackbone

    with pytest.raises(CheckpointError, match="trained on 'z_image', not 'flux2_klein'"):
        load_editor(Flux2KleinBackbone.tiny(), out)
    # A training checkpoint given where an export belongs says how to export it.
    with pytest.raises(CheckpointError, match=r"torch pickle .*python -m train_cli export RUN_DIR_OR_CHECKPOINT"):
        load_editor(ZImageBackbone.tiny(), latest_checkpoint(tmp_path / "np"))


@pytest.mark.parametrize(
    "row, match",
    [
        ({"image": "a.png", "edit_type": "color", "edited_caption": "x"}, r"row 1.*instruction"),
        ({"image": "missing.png", "instruction": "x", "edit_type": "color", "edited_caption": "x"}, r"row 1.*missing.png"),
    ],
)
def test_bad_manifest_rows_give_one_line_errors(tmp_path, manifest, capsys, row, match):
    bad = manifest.parent / f"bad-{abs(hash(match))}.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    code = cli_main(["train", "model.backbone=z_image", f"data.manifest={bad}", f"train.run_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:")
    assert __import__("re").search(match, err), err


def test_config_typo_is_a_one_line_error(capsys):
    assert cli_main(["check-config", "train.stpes=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown config key 'train.stpes'; did you mean 'train.steps'?"


def test_offload_moves_each_model_to_the_device_only_while_it_works_and_tensorboard_is_optional(
        tmp_path, manifest, monkeypatch):
    trainer = Trainer(config(tmp_path, manifest, "train.steps=1", "train.offload_text_encoder=true",
                             "train.offload_judge=true", "train.tensorboard=true"), log=quiet)
    # A CPU cannot see memory move, so the trainer's device is named "cpu:0" (the same memory) and every
    # move is recorded: "cpu:0" = to the compute device, "cpu" = offloaded; and where each model is when used.
    trainer.device = torch.device("cpu", 0)
    where, events = {"judge": "cpu", "text_encoder": "cpu"}, []

    def record(name, module):
        to = module.to

        def moved(device, *args, **kwargs):
            where[name] = str(device)
            events.append((name, "to " + str(device)))
            return to(device, *args, **kwargs)
        monkeypatch.setattr(module, "to", moved)

    def record_use(name, owner, method):
        call = getattr(owner, method)
        monkeypatch.setattr(owner, method, lambda *a: events.append((name, "used on " + where[name])) or call(*a))

    record("judge", trainer.judge)
    record("text_encoder", trainer.backbone.text_encoder)
    record_use("judge", trainer.judge, "answer_logits")
    record_use("text_encoder", trainer.backbone, "encode_text")
    assert trainer.train_step()["step"] == 1
    judge = [e for n, e in events if n == "judge"]
    assert judge == ["to cpu:0", "used on cpu:0", "to cpu"]  # on the device for the editor update only
    encoder = [e for n, e in events if n == "text_encoder"]
    assert encoder[:3] == ["to cpu:0", "used on cpu:0", "to cpu"] and len(encoder) % 3 == 0
    assert all(e == "used on cpu:0" for e in encoder[1::3])  # every encoding ran on the device, then left it
    trainer.text(list(trainer.text.items)[:2], trainer.device)  # cached prompts: the text encoder stays put
    assert [e for n, e in events if n == "text_encoder"] == encoder
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(NPEditError, match="pip install tensorboard"):
            trainer.run()
    else:
        trainer.cfg.train.steps = 2
        trainer.run()
        assert any((tmp_path / "tensorboard").iterdir())
