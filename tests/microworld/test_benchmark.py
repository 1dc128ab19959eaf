"""benchmarks/microworld.py's rows run: the warm-up row (0 training steps) builds its trainer like the others,
in a run folder of its own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from npedit_core.checkpoint import latest_checkpoint
from npedit_core.microworld.editor import (
    JUDGE_DIR, TEACHER_DIR, WARMUP_FILE, eval_items, examples, make_trainer, write_manifest,
)

pytestmark = pytest.mark.skipif(not (TEACHER_DIR.is_dir() and JUDGE_DIR.is_dir() and WARMUP_FILE.is_file()),
                                reason="micro-world weights not shipped")


def _benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "microworld.py"
    spec = importlib.util.spec_from_file_location("microworld_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_warmup_row_evaluates_the_untrained_editor(tmp_path):
    bench = _benchmark()
    items = examples(8)
    evals = eval_items(1)
    manifest = write_manifest(tmp_path / "data", items)
    row = bench.run("warmup", 0, 0, tmp_path, manifest, items, evals, log=lambda *a: None, quiet=True)
    assert row["variant"] == "warmup" and row["steps"] == 0
    assert row["metrics"]["all"]["n"] == len(evals) == 5
    assert len(row["outputs"]) == len(evals)
    assert latest_checkpoint(tmp_path / "warmup-s0") is None, "the warm-up row trained"
    # its own run folder: parallel jobs run the NP-Edit row of the same seed beside it (a shared folder is locked)
    assert not (tmp_path / "npedit-s0").exists()


def test_rows_start_from_the_warmup_file_given(tmp_path):
    """`--warmup FILE`: every row starts from that editor (here the shipped NP-Edit one), not the shipped warm-up."""
    import torch

    from npedit_core.microworld.editor import NPEDIT_FILE

    bench = _benchmark()
    items, evals = examples(8), eval_items(1)
    manifest = write_manifest(tmp_path / "data", items)
    shipped = bench.run("warmup", 0, 0, tmp_path / "a", manifest, items, evals, quiet=True)
    other = bench.run("warmup", 0, 0, tmp_path / "b", manifest, items, evals, quiet=True, warmup=NPEDIT_FILE)
    again = bench.run("warmup", 0, 0, tmp_path / "c", manifest, items, evals, quiet=True, warmup=WARMUP_FILE)
    assert torch.equal(shipped["outputs"], again["outputs"])
    assert (shipped["outputs"] - other["outputs"]).abs().max() > 0.05


def test_rows_record_how_the_judge_answers_about_their_outputs(tmp_path):
    """Every row, the supervised one too (its trainer has no judge), records `judge.agreement` on its outputs."""
    from npedit_core.microworld.world import EDIT_TYPES

    bench = _benchmark()
    items, evals = examples(8), eval_items(2)
    manifest = write_manifest(tmp_path / "data", items)
    for variant in ("warmup", "supervised"):
        row = bench.run(variant, 0, 1 if variant == "supervised" else 0, tmp_path, manifest, items, evals, quiet=True)
        for kind in EDIT_TYPES:
            got = row["judge"][kind]
            assert got["n_pass"] + got["n_fail"] == 2
            assert all(p is None or 0 <= p <= 1 for p in (got["p_done_pass"], got["p_done_fail"]))
        assert "identity_vs_preservation" in row["judge"]


def test_a_run_folder_left_by_an_earlier_benchmark_is_not_resumed(tmp_path):
    """The default --work folder outlives a benchmark: the next one (other steps, another warm-up) starts afresh."""
    import torch

    bench = _benchmark()
    items, evals = examples(8), eval_items(1)
    manifest = write_manifest(tmp_path / "data", items)
    bench.run("supervised", 0, 2, tmp_path / "old", manifest, items, evals, quiet=True)  # leaves a step-2 checkpoint
    again = bench.run("supervised", 0, 1, tmp_path / "old", manifest, items, evals, quiet=True)
    fresh = bench.run("supervised", 0, 1, tmp_path / "new", manifest, items, evals, quiet=True)
    assert torch.equal(again["outputs"], fresh["outputs"])
    assert latest_checkpoint(tmp_path / "old" / "supervised-s0").name == "step-00000001.pt"


def test_the_paired_baseline_at_its_own_learning_rate_trains_on_the_pairs(tmp_path):
    """`supervised_lr5e-4` is the supervised row (flow matching on the true pairs) at the warm-up's learning rate."""
    from npedit_core.microworld.editor import SupervisedTrainer

    items = examples(4)
    manifest = write_manifest(tmp_path / "data", items)
    trainers = {v: make_trainer(v, tmp_path / v, manifest, items, 1, 0, log=lambda *a: None)
                for v in ("supervised", "supervised_lr5e-4")}
    assert all(isinstance(t, SupervisedTrainer) and t.judge is None for t in trainers.values())
    assert (trainers["supervised"].cfg.optim.lr, trainers["supervised_lr5e-4"].cfg.optim.lr) == (1e-4, 5e-4)
    assert trainers["supervised_lr5e-4"].cfg.train.stage == "warmup"


def test_every_row_records_what_it_trained_with(tmp_path):
    """The JSON's runs say each row's settings; the lower-judge-weight NP-Edit row differs from NP-Edit in w_vlm only."""
    bench = _benchmark()
    items, evals = examples(4), eval_items(1)
    manifest = write_manifest(tmp_path / "data", items)
    row = bench.run("warmup", 0, 0, tmp_path, manifest, items, evals, quiet=True)
    assert row["settings"]["overrides"] == [] and row["settings"]["w_vlm"] == 3.0  # the recipe itself (editor.SETTINGS)
    settings = {v: bench.row_settings(v, make_trainer(v, tmp_path / v, manifest, items, 1, 0, log=lambda *a: None).cfg)
                for v in ("npedit", "npedit_w_vlm1", "no_identity", "supervised_lr5e-4")}
    base = settings["npedit"]
    assert {k for k in base if settings["npedit_w_vlm1"][k] != base[k]} == {"overrides", "w_vlm"}
    assert settings["npedit_w_vlm1"]["w_vlm"] == 1.0
    assert settings["no_identity"]["identity_question"] is False and base["identity_question"] is True
    assert (settings["supervised_lr5e-4"]["stage"], settings["supervised_lr5e-4"]["lr"]) == ("warmup", 5e-4)
    assert not base["lora"] and not base["gradient_checkpointing"]  # the micro-world recipe: full fine-tune


def test_world_parts_say_whether_the_judge_sees_the_scene():
    """The benchmark's world measurements include the judge's own captions of held-out scenes, and its table says so."""
    bench = _benchmark()
    world = bench.parts(eval_items(1), n_captions=2)
    seen = world["judge_captions"]
    assert set(seen) == {"exact", "background", "shape_phrase", "colour_kind"}
    assert all(0.0 <= v <= 1.0 for v in seen.values())
    assert seen["background"] > 0.9  # the shipped judge names every held-out background (measured 1.00)
    text = bench.markdown({}, 0, 5, world)
    assert f"colour and kind in {seen['colour_kind']:.2f} of shapes" in text
