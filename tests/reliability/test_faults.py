"""Nothing lost, nothing silently wrong: one test per fault, on tiny CPU trainers.

| fault | what holds |
|---|---|
| `checkpoints/latest` missing | resume from the newest readable checkpoint, said; newer steps are never pruned |
| two `train` on one run_dir | the second refuses at once naming the holder's pid; a dead holder's lock is taken over |
| kill -9, then resume | metrics.jsonl is cut back to the resumed step: each step once |
| disk full while saving | one-line error naming the file and the free space; no temporary file left |
| unwritable run_dir | refused before any model is built |
| export to a full / unwritable place | one-line error naming the file; no temporary file left |
| save_every / log_every / batch_size 0, negative or NaN lr, sampler.steps -1 | config errors naming the key |
| lr 1e30 | the run stops after train.max_skipped_steps skipped updates, saving nothing more, naming the good checkpoint |
| 16-bit PNG | read as its grey level (not white) in training and in `edit` |
| 20000x20 image | refused at manifest read, naming the file |
| truncated JPEG | the run stops at that batch, having saved its last finished step, naming the file; resumes after |
| Ctrl-C | saves, exit code 130 |
| resume with another seed / lr | refused, listing the keys; --allow-config-change resumes |
| RGBA | one rule (onto white) in training and in `edit` |
| `edit -i a/x.png b/x.png` | two distinct outputs |
| bad `edit` inputs | one-line errors before any model loads; a directory says so |
| `key=value` after `-p` | read as an override |
| the demo again | says it reuses; --fresh starts over |
| exports | the umask's mode, as every other output |
| a checkpoint with pickled code | refused, never run |
"""

import json
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from npedit_core import checkpoint as ckpt_module
from npedit_core import trainer as trainer_module
from npedit_core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from npedit_core.data.buckets import load_image
from npedit_core.editing import read_image
from npedit_core.errors import CheckpointError, NPEditError
from npedit_core.export import export_checkpoint
from npedit_core.trainer import Trainer
from tests.core.test_trainer import config, manifest, quiet  # noqa: F401  (manifest is a fixture)
from train_cli.cli import main as cli_main


def steps_in(run_dir) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.pt"))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


def test_a_missing_latest_pointer_resumes_from_the_newest_checkpoint_and_prunes_nothing_newer(tmp_path, manifest):
    Trainer(config(tmp_path, manifest, "train.steps=4", "train.save_every=2", "train.keep_checkpoints=2"), log=quiet).run()
    (tmp_path / "checkpoints/latest").unlink()
    said = []
    resumed = Trainer(config(tmp_path, manifest, "train.steps=6", "train.save_every=2"), log=said.append)
    assert resumed.step == 4 and any("missing" in s for s in said)
    # An unreadable newest file: the one before it, said so; and saving step 3 never deletes step 4.
    (tmp_path / "checkpoints/step-00000004.pt").write_bytes(b"torn")
    said.clear()
    older = Trainer(config(tmp_path, manifest, "train.steps=6", "train.save_every=2"), log=said.append)
    assert older.step == 2 and any("skipping" in s and "step-00000004" in s for s in said)
    save_checkpoint(tmp_path, 3, older.state_dict(), keep=2)
    assert steps_in(tmp_path) == [2, 3, 4]


def test_a_second_trainer_on_the_same_run_dir_refuses_and_a_dead_holders_lock_is_taken(tmp_path, manifest):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / ".lock").write_text(f"{holder.pid} {__import__('socket').gethostname()}")
        with pytest.raises(NPEditError, match=rf"{tmp_path}.* in use by another training process \(pid {holder.pid}\)"):
            Trainer(config(tmp_path, manifest), log=quiet)
    finally:
        holder.kill()
        holder.wait()
    trainer = Trainer(config(tmp_path, manifest, "train.steps=1"), log=quiet)  # the holder is gone: stale lock
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    trainer.run()
    assert not (tmp_path / ".lock").exists()  # released when the run ends


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path, manifest):
    Trainer(config(tmp_path, manifest, "train.steps=3", "train.save_every=2"), log=quiet).run()
    # As after a kill -9 between the step-3 log line and its save: the checkpoint of step 3 never landed.
    (tmp_path / "checkpoints/step-00000003.pt").unlink()
    (tmp_path / "checkpoints/latest").write_text("step-00000002.pt\n")
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "vlm_lo')  # and a torn last line
    Trainer(config(tmp_path, manifest, "train.steps=3", "train.save_every=2"), log=quiet).run()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def disk_full(obj, handle):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(ckpt_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*step-00000001\.pt: .*file write failed \(.* GiB free"):
        save_checkpoint(tmp_path, 1, {"w": torch.ones(1)})
    assert not list((tmp_path / "checkpoints").glob(".*tmp")) and latest_checkpoint(tmp_path) is None


def test_an_unwritable_run_dir_is_refused_before_any_model_is_built(tmp_path, manifest, monkeypatch):
    monkeypatch.setattr(trainer_module, "build_backbone", lambda *a: pytest.fail("a model was built"))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NPEditError, match=r"train.run_dir .*file/run: cannot write there"):
        Trainer(config(tmp_path / "file/run", manifest), log=quiet)


def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, manifest, monkeypatch):
    Trainer(config(tmp_path / "run", manifest, "train.steps=1"), log=quiet).run()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"cannot write .*file/editor\.safetensors"):
        export_checkpoint(tmp_path / "run", tmp_path / "file/editor.safetensors")
    from npedit_core import export as export_module

    def full(weights, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "save_file", full)
    with pytest.raises(CheckpointError, match=r"cannot write .*editor\.safetensors: .*No space left on device"):
        export_checkpoint(tmp_path / "run", tmp_path / "out/editor.safetensors")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("override, match", [
    ("train.save_every=0", "train.save_every: must be at least 1, got 0"),
    ("train.log_every=0", "train.log_every: must be at least 1, got 0"),
    ("train.batch_size=0", "train.batch_size: must be at least 1, got 0"),
    ("optim.lr=-1e-4", "optim.lr: must be positive"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),
    ("sampler.steps=-1", "sampler.steps: must be at least 1, got -1"),
    ("train.steps=0", "train.steps: must be at least 1, got 0"),
])
def test_out_of_range_settings_are_config_errors(capsys, override, match):
    assert cli_main(["check-config", override]) == 2
    assert match in one_line_error(capsys)


def test_a_huge_learning_rate_stops_the_run_and_names_the_good_checkpoint(tmp_path, manifest):
    Trainer(config(tmp_path, manifest, "train.steps=2"), log=quiet).run()
    good = load_checkpoint(tmp_path / "checkpoints/step-00000002.pt")["editor"]
    poisoned = Trainer(config(tmp_path, manifest, "train.steps=40", "optim.lr=1e30", "train.max_skipped_steps=3",
                              "train.allow_config_change=true"), log=quiet)
    with pytest.raises(NPEditError, match=r"last 3 editor updates were all skipped.*step-00000002\.pt"):
        poisoned.run()
    assert poisoned.step < 40 and steps_in(tmp_path) == [2]  # nothing of the 1e30 run was saved
    assert all(torch.equal(good[k], v) for k, v in load_checkpoint(latest_checkpoint(tmp_path))["editor"].items())


def test_16_bit_pngs_keep_their_grey_level_in_training_and_edit(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((20, 30), 32768, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    trained = load_image(path, (16, 16))
    edited = read_image(path)
    assert trained.shape == (3, 16, 16) and torch.allclose(trained, torch.full_like(trained, 128 / 255), atol=1e-6)
    assert torch.allclose(edited, torch.full_like(edited, 128 / 255), atol=1e-6)


def test_transparent_pixels_are_white_in_training_and_in_edit(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red underneath, fully transparent on the left half
    rgba[:, 8:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    trained, edited = load_image(tmp_path / "a.png", (16, 16)), read_image(tmp_path / "a.png")[0]
    assert torch.equal(trained, edited)
    assert torch.all(edited[:, :, :8] == 1.0)  # transparent: white, not the red underneath
    assert torch.allclose(edited[0, :, 8:], torch.tensor(200 / 255)) and torch.all(edited[1:, :, 8:] == 0)


def test_a_20000x20_image_is_refused_at_manifest_read(tmp_path, capsys):
    Image.new("RGB", (20000, 20)).save(tmp_path / "strip.png")
    row = {"image": "strip.png", "instruction": "x", "edit_type": "color", "edited_caption": "x"}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    assert cli_main(["train", "model.backbone=z_image", f"data.manifest={tmp_path / 'm.jsonl'}", "data.resolution=32",
                     "train.steps=1", f"train.run_dir={tmp_path / 'run'}"]) == 2
    assert "row 1: image: image" in (err := one_line_error(capsys)) and "strip.png is 20000x20, more than 4:1" in err


def test_a_truncated_jpeg_stops_the_run_after_saving_its_last_step(tmp_path, manifest):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        (folder / row["image"]).write_bytes((manifest.parent / row["image"]).read_bytes())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "bad.jpg")
    whole = (folder / "bad.jpg").read_bytes()
    (folder / "bad.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + [dict(rows[2], image="bad.jpg")]))
    for seed in range(10):  # a data order (fixed by the seed) in which the bad row is not in the first step
        trainer = Trainer(config(tmp_path / "run", folder / "m.jsonl", "train.steps=30", "train.save_every=100",
                                 f"train.seed={seed}"), log=quiet)
        if [3] not in trainer.sampler.epoch_plan(0)[:2]:
            break
    with pytest.raises(NPEditError, match=r"row 4: image: cannot read image .*bad\.jpg.*Saved step (\d+)"):
        trainer.run()
    assert trainer.step > 0 and steps_in(tmp_path / "run") == [trainer.step]  # the work up to the bad batch is kept
    (folder / "bad.jpg").write_bytes(whole)  # fixed: the same command resumes there
    resumed = Trainer(config(tmp_path / "run", folder / "m.jsonl", "train.steps=30", f"train.seed={seed}"), log=quiet)
    assert resumed.step == trainer.step


def test_ctrl_c_saves_and_exits_130(tmp_path, manifest, monkeypatch):
    step = Trainer.train_step

    def step_then_ctrl_c(self):
        logs = step(self)
        os.kill(os.getpid(), signal.SIGINT)
        return logs

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    argv = ["train", "model.backbone=z_image", "model.dtype=float32", "judge.dtype=float32", "data.resolution=32",
            f"data.manifest={manifest}", f"train.run_dir={tmp_path}", "train.steps=50", "train.preview_every=0",
            "loss.fake_updates=0", "lora.rank=4", "lora.alpha=4"]
    assert cli_main(argv) == 130
    assert steps_in(tmp_path) == [1]


def test_resuming_with_another_seed_or_lr_is_refused_unless_allowed(tmp_path, manifest):
    Trainer(config(tmp_path, manifest, "train.steps=2"), log=quiet).run()
    with pytest.raises(NPEditError, match=r"optim.lr: 0.001 -> 0.002; train.seed: 0 -> 1 .*--allow-config-change"):
        Trainer(config(tmp_path, manifest, "train.steps=4", "train.seed=1", "optim.lr=2e-3"), log=quiet)
    said = []
    allowed = Trainer(config(tmp_path, manifest, "train.steps=4", "train.seed=1", "train.allow_config_change=true"),
                      log=said.append)
    assert allowed.step == 2 and "resume: train.seed: 0 -> 1 (changed)" in said
    assert Trainer(config(tmp_path, manifest, "train.steps=8", "train.save_every=4"), log=quiet).step == 2  # harmless


def test_edit_writes_distinct_outputs_for_inputs_with_one_name(tmp_path, manifest, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes((manifest.parent / "a.png").read_bytes())
    code = cli_main(["edit", "-i", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "-p", "make it red",
                     "model.backbone=z_image", "model.dtype=float32", "-o", str(tmp_path / "out")])
    assert code == 0  # the override after -p was read as one: z_image (the default flux2_klein would also run)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x-2_edited.png", "x_edited.png"]
    out = capsys.readouterr().out
    assert f"from {tmp_path / 'b/x.png'}" in out


@pytest.mark.parametrize("make, match", [
    (lambda d: d, "is a directory; give image files"),
    (lambda d: d / "missing.png", "image not found"),
    (lambda d: (d / "notes.png").write_text("hello") and d / "notes.png", "cannot read it"),
])
def test_bad_edit_inputs_fail_before_any_model_loads(tmp_path, monkeypatch, capsys, make, match):
    from npedit_core import editing

    monkeypatch.setattr(editing, "build_backbone", lambda *a: pytest.fail("a model was loaded"))
    assert cli_main(["edit", "-i", str(make(tmp_path)), "-p", "make it red"]) == 2
    assert match in one_line_error(capsys)


def test_an_empty_instruction_and_a_bad_override_after_p_fail_before_any_model_loads(tmp_path, manifest, monkeypatch,
                                                                                      capsys):
    from npedit_core import editing

    monkeypatch.setattr(editing, "build_backbone", lambda *a: pytest.fail("a model was loaded"))
    image = str(manifest.parent / "a.png")
    assert cli_main(["edit", "-i", image, "-p", " "]) == 2
    assert "--instruction 1: empty" in one_line_error(capsys)
    assert cli_main(["edit", "-i", image, "-p", "make it red", "sampler.steps=0"]) == 2
    assert "sampler.steps: must be at least 1" in one_line_error(capsys)  # not "2 instructions for 1 image"


def test_the_demo_says_it_reuses_a_folder_and_fresh_starts_over(tmp_path, monkeypatch):
    from npedit_core.microworld import editor

    monkeypatch.setattr(editor, "examples", lambda n: (_ for _ in ()).throw(RuntimeError("stop here")))
    (tmp_path / "npedit/checkpoints").mkdir(parents=True)
    said = []
    with pytest.raises(RuntimeError, match="stop here"):
        __import__("npedit_core.demo", fromlist=["run_demo"]).run_demo(tmp_path, log=said.append)
    assert any("reusing the runs in" in s and "--fresh" in s for s in said)
    said.clear()
    with pytest.raises(RuntimeError, match="stop here"):
        __import__("npedit_core.demo", fromlist=["run_demo"]).run_demo(tmp_path, log=said.append, fresh=True)
    assert not (tmp_path / "npedit").exists() and not any("reusing" in s for s in said)


def test_exports_get_the_mode_of_every_other_output(tmp_path, manifest):
    Trainer(config(tmp_path / "run", manifest, "train.steps=1"), log=quiet).run()
    out = export_checkpoint(tmp_path / "run", tmp_path / "editor.safetensors")
    assert out.stat().st_mode & 0o777 == (tmp_path / "run/config.yaml").stat().st_mode & 0o777


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_checkpoint_with_pickled_code_is_refused_not_run(tmp_path, manifest, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other/checkpoints").mkdir(parents=True)
    with open(tmp_path / "other/checkpoints/step-00000001.pt", "wb") as handle:
        pickle.dump({"step": 1, "editor": Payload()}, handle, protocol=2)
    (tmp_path / "other/checkpoints/latest").write_text("step-00000001.pt\n")
    with pytest.raises(CheckpointError, match=r"holds Python objects that are not plain data.*refusing to load it"):
        Trainer(config(tmp_path / "run", manifest, f"train.init_from={tmp_path / 'other'}"), log=quiet)
    with pytest.raises(CheckpointError, match="refusing"):
        Trainer(config(tmp_path / "other", manifest), log=quiet)  # as a resume, too
    assert not (tmp_path / "pwned.txt").exists()
