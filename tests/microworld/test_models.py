"""The shipped micro-world parts load through the ordinary config paths and behave (fast)."""

from __future__ import annotations

import json

import pytest
import torch

from npedit_core.config import load_config
from npedit_core.errors import CheckpointError
from npedit_core.judges.prompts import edit_questions
from npedit_core.export import load_editor, read_export
from npedit_core.microworld.editor import EVAL_SEED_BASE, JUDGE_DIR, SETTINGS, TEACHER_DIR, WARMUP_FILE
from npedit_core.microworld.world import render_batch, sample_example
from npedit_core.models import build_backbone, build_judge

pytestmark = pytest.mark.skipif(not (TEACHER_DIR.is_dir() and JUDGE_DIR.is_dir()), reason="micro-world weights not shipped")


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, SETTINGS)


def test_teacher_is_a_flux2_klein_folder_with_its_own_autoencoder(cfg, tmp_path, monkeypatch):
    # Nothing outside the repository: the shared assets folder is empty.
    monkeypatch.setenv("NPEDIT_SHARED", str(tmp_path))
    backbone = build_backbone(cfg.model)
    held_out = [sample_example(EVAL_SEED_BASE + i) for i in range(16)]
    images = render_batch([s for s, _ in held_out] + [e.target for _, e in held_out])
    latents = backbone.encode_images(images)
    assert latents.shape == (32, 128, 4, 4)
    back = backbone.decode_latents(latents)
    psnr = 10 * torch.log10(1 / torch.mean((back - images) ** 2))
    assert psnr >= 30, f"autoencoder round trip {psnr:.1f} dB"
    a, b = backbone.encode_text(["make the red circle blue", "make the red circle green"]).embeds
    assert a.shape[0] == json.loads((TEACHER_DIR / "npedit_backbone.json").read_text())["max_sequence_length"]
    assert not torch.allclose(a, b)  # the colour word is inside max_sequence_length
    longest = max((sample_example(i)[1].target.caption() for i in range(500)), key=len)
    chat = backbone.tokenizer.apply_chat_template([{"role": "user", "content": longest}], tokenize=False,
                                                  add_generation_prompt=True)
    assert len(backbone.tokenizer(chat)["input_ids"]) <= backbone.max_sequence_length, "captions are truncated"


def test_judge_loads_and_passes_gradients_to_the_image(cfg):
    judge = build_judge(cfg.judge)
    scene, edit = sample_example(3)
    ref, out = render_batch([scene, edit.target])
    out = out.clone().requires_grad_(True)
    logits = judge.answer_logits(edit_questions(ref, out, edit.instruction, edit.edit_type, edit.object))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    (logits[:, 0] - logits[:, 1]).sum().backward()
    assert out.grad is not None and out.grad.abs().sum() > 0


def test_judge_agreement_splits_its_answers_by_the_oracle(cfg):
    """`judge.agreement`: correct targets all pass, unchanged copies all fail, and the judge's answers are its own."""
    from npedit_core.microworld.editor import eval_items
    from npedit_core.microworld.judge import agreement
    from npedit_core.microworld.world import EDIT_TYPES

    judge, items = build_judge(cfg.judge), eval_items(4)
    targets = agreement(judge, items, render_batch([e.target for _, e in items]))
    copies = agreement(judge, items, render_batch([s for s, _ in items]))
    for kind in EDIT_TYPES:
        assert (targets[kind]["n_pass"], targets[kind]["n_fail"], targets[kind]["p_done_fail"]) == (4, 0, None)
        assert (copies[kind]["n_pass"], copies[kind]["n_fail"], copies[kind]["p_done_pass"]) == (0, 4, None)
    # the judge tells a new background from the old one (held-out accuracy 0.97)
    assert targets["background"]["p_done_pass"] > 0.9 > 0.1 > copies["background"]["p_done_fail"]
    assert copies["identity_vs_preservation"] is None  # every copy keeps everything: nothing to correlate


def test_judge_edit_progress_is_its_answer_along_the_way_from_copy_to_edit(cfg):
    """`judge.edit_progress`: at share 0 the unchanged copy, at 1 the target, as `agreement` sees them."""
    from npedit_core.microworld.editor import eval_items
    from npedit_core.microworld.judge import agreement, edit_progress

    judge, items = build_judge(cfg.judge), eval_items(4)
    progress = edit_progress(judge, items)
    targets = agreement(judge, items, render_batch([e.target for _, e in items]))
    copies = agreement(judge, items, render_batch([s for s, _ in items]))
    assert progress["shares"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for kind in ("color", "remove", "add", "replace", "background"):
        assert progress[kind]["p_done"][0] == pytest.approx(copies[kind]["p_done_fail"], abs=1e-3)
        assert progress[kind]["p_done"][-1] == pytest.approx(targets[kind]["p_done_pass"], abs=1e-3)
    done = progress["background"]["p_done"]  # the shipped judge follows a background edit all the way
    assert done == sorted(done) and done[0] < 0.1 and done[-1] > 0.9


def test_editor_like_judge_questions_answer_with_the_share_done():
    """Half-done edits are asked about with a soft answer: P(Yes) = the share of the edit done."""
    import random

    from npedit_core.microworld.judge import editor_like_image, make_question
    from npedit_core.microworld.world import render

    seen = set()
    for seed in range(60):
        rng = random.Random(seed)
        scene, edit = sample_example(seed)
        src, tgt = render(scene), render(edit.target)
        image, p_yes = editor_like_image(scene, edit, rng, "edit")
        share = 1 - p_yes if edit.edit_type == "remove" else p_yes
        erased = p_yes == 0.0 and torch.equal(image, render(type(scene)(scene.background, ())))
        assert erased or torch.allclose(image, (1 - share) * src + share * tgt, atol=1e-6), seed
        seen.add("erased" if erased else "partly done")
        q = make_question(seed, "identity", editor_like=1.0)
        assert 0.0 <= q.p_yes <= 1.0 and q.desired == ("Yes" if q.p_yes >= 0.5 else "No")
    assert seen == {"erased", "partly done"}
    assert not hasattr(make_question(0), "p_yes")  # the judge's own questions keep their hard answers


def test_backbone_options_file_is_checked(tmp_path):
    from npedit_core.backbones.flux2_klein import BACKBONE_OPTIONS_FILE, _backbone_options

    (tmp_path / BACKBONE_OPTIONS_FILE).write_text(json.dumps({"max_sequence_length": 8, "colour": 1}))
    with pytest.raises(CheckpointError, match="colour"):
        _backbone_options(tmp_path)


@pytest.mark.skipif(not WARMUP_FILE.is_file(), reason="micro-world warm-up editor not shipped")
def test_warmup_editor_is_an_export_that_edit_and_the_nodes_load(cfg):
    # safetensors with NP-Edit export metadata (ComfyUI cannot load a pickle): `edit` and the nodes read it.
    _, meta = read_export(WARMUP_FILE, tensors=False)
    assert meta["npedit_format"] == "full" and meta["role"] == "editor" and meta["stage"] == "warmup"
    backbone = build_backbone(cfg.model)
    before = {k: v.clone() for k, v in backbone.transformer.state_dict().items()}
    load_editor(backbone, WARMUP_FILE)
    changed = [k for k, v in backbone.transformer.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2, "the warm-up left the teacher's weights as they were"


@pytest.mark.skipif(not TEACHER_DIR.is_dir(), reason="micro-world weights not shipped")
def test_warmup_build_trains_a_share_text_to_image_then_a_tail_and_records_them(tmp_path):
    """`editor warmup` (the recipe in build_warmup's docstring) is one command, and running it again is a no-op."""
    from npedit_core.microworld.editor import main

    out, work = tmp_path / "warm.safetensors", tmp_path / "w"
    args = ["warmup", "--steps", "3", "--t2i-share", "0.5", "--tail-steps", "1",
            "--tail", "optim.lr=1e-4", "train.text_dropout=0.5", "--out", str(out), "--work", str(work)]
    main(args)
    weights, meta = read_export(out)
    assert meta["stage"] == "warmup" and meta["step"] == "3" and weights
    report = json.loads((tmp_path / "warmup_log.json").read_text())
    assert (report["t2i_share"], report["tail_steps"], report["tail"]) == (0.5, 1, ["optim.lr=1e-4", "train.text_dropout=0.5"])
    assert report["train_seconds"] > 0
    config = (work / "run" / "config.yaml").read_text()
    assert "warmup_t2i_share: 0.5" in config and "text_dropout: 0.5" in config
    logs = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["lr"] for x in logs] == [5e-4, 5e-4, 1e-4]  # the tail resumed the run with its own settings
    assert all(x["warmup_t2i_loss"] > 0 for x in logs)  # batch 16: 8 rows from captions alone
    main(args)  # done already: neither phase trains again, nor does the first refuse the tail's config
    assert len((work / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_warmup_build_refuses_a_tail_as_long_as_the_run(capsys):
    from npedit_core.microworld.editor import main

    with pytest.raises(SystemExit):
        main(["warmup", "--steps", "100", "--tail-steps", "100"])
    assert "--tail-steps must be below --steps" in capsys.readouterr().err


@pytest.mark.skipif(not WARMUP_FILE.is_file(), reason="micro-world warm-up editor not shipped")
def test_shipped_editors_are_what_their_commands_build_by_default():
    """The logs beside the shipped editors record the recipes `editor warmup` and `editor npedit` run with no options."""
    from npedit_core.microworld.editor import (NPEDIT_FILE, NPEDIT_STEPS, WARMUP_STEPS, WARMUP_T2I_SHARE, WARMUP_TAIL,
                                               WARMUP_TAIL_STEPS)

    report = json.loads((WARMUP_FILE.parent / "warmup_log.json").read_text())
    assert (report["steps"], report["t2i_share"], report["tail_steps"], report["tail"]) == \
        (WARMUP_STEPS, WARMUP_T2I_SHARE, WARMUP_TAIL_STEPS, WARMUP_TAIL)
    assert read_export(WARMUP_FILE, tensors=False)[1]["step"] == str(WARMUP_STEPS)
    assert json.loads((NPEDIT_FILE.parent / "npedit_editor_log.json").read_text())["steps"] == NPEDIT_STEPS
    assert read_export(NPEDIT_FILE, tensors=False)[1]["step"] == str(NPEDIT_STEPS)


def test_caption_scores_tell_a_judge_that_sees_from_one_that_guesses():
    from npedit_core.microworld.judge import caption_scores
    from npedit_core.microworld.world import KINDS

    scenes = [sample_example(EVAL_SEED_BASE + i)[0] for i in range(20)]
    right = caption_scores(scenes, [s.caption() for s in scenes])
    assert right == {"exact": 1.0, "background": 1.0, "shape_phrase": 1.0, "colour_kind": 1.0}

    def other_kind(kind):
        return KINDS[(KINDS.index(kind) + 1) % len(KINDS)]

    guessed = [s.caption() for s in scenes]  # every shape named with the next kind: colours and places still right
    for i, s in enumerate(scenes):
        for shape in s.shapes:
            guessed[i] = guessed[i].replace(shape.name, f"{shape.color} {other_kind(shape.kind)}")
    wrong = caption_scores(scenes, guessed)
    assert wrong["background"] == 1.0 and wrong["exact"] < 0.5 and wrong["colour_kind"] < 0.5
    assert caption_scores(scenes, [""] * len(scenes)) == {"exact": 0.0, "background": 0.0, "shape_phrase": 0.0,
                                                          "colour_kind": 0.0}


def test_caption_phase_teaches_a_new_judge_to_caption():
    """`judge --caption-steps`: captioning alone lowers a new judge's caption loss on held-out scenes."""
    import random

    from npedit_core.judges.base import Question
    from npedit_core.judges.qwen2_5_vl import SPEC, Qwen25VLJudge
    from npedit_core.microworld.judge import JUDGE_SIDE, CAPTION_PROMPT, build_model, caption_phase, continuation_loss
    from npedit_core.microworld.tokenizer import train_tokenizer
    from npedit_core.microworld.world import render, sample_scene

    tokenizer = train_tokenizer(None, 0)
    spec = type(SPEC)(**{**SPEC.__dict__, "min_pixels": JUDGE_SIDE**2, "max_pixels": JUDGE_SIDE**2})
    judge = Qwen25VLJudge(build_model(tokenizer, 0), tokenizer, spec)
    rng = random.Random(EVAL_SEED_BASE)
    scenes = [sample_scene(rng) for _ in range(32)]
    questions = [Question(CAPTION_PROMPT, [render(s)]) for s in scenes]

    def held_out_loss():
        with torch.no_grad():
            return continuation_loss(judge, questions, [s.caption() for s in scenes]).item()

    before = held_out_loss()
    judge.model.train().requires_grad_(True)
    caption_phase(judge, steps=30, seed=0, batch=8, lr=1e-3, log=lambda *a: None)
    judge.model.eval().requires_grad_(False)
    after = held_out_loss()
    assert after < 0.6 * before, f"caption loss {before:.3f} -> {after:.3f}"


def test_judge_build_refuses_a_negative_caption_phase(tmp_path, capsys):
    from npedit_core.microworld.judge import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--caption-steps", "-1"])
    assert "--caption-steps must be 0 or more, got -1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
