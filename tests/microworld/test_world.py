"""The micro-world's renderer, edits, tokenizer and oracle (fast; no pretrained weights needed)."""

from __future__ import annotations

import random
from dataclasses import replace

import torch

from npedit_core.data import read_manifest
from npedit_core.microworld.oracle import scene_match, score
from npedit_core.microworld.world import (
    BACKGROUNDS, COLORS, EDIT_TYPES, KINDS, Scene, Shape, render, sample_edit, sample_example, sample_scene,
)


def test_every_edit_type_changes_the_right_thing():
    rng = random.Random(0)
    for edit_type in EDIT_TYPES:
        for _ in range(30):
            scene = sample_scene(rng, 2)
            edit = sample_edit(scene, rng, edit_type)
            src, tgt = render(scene), render(edit.target)
            assert (src - tgt).abs().amax() > 0.2, edit.instruction  # the edit is visible
            assert edit.target.caption() != scene.caption()
            if edit_type == "background":
                assert edit.target.shapes == scene.shapes
            elif edit_type == "remove":
                assert len(edit.target.shapes) == len(scene.shapes) - 1 and edit.object.startswith("a ")
            elif edit_type == "add":
                assert len(edit.target.shapes) == len(scene.shapes) + 1
            else:  # color / replace touch exactly one shape and keep its place and size
                (i,) = edit.changed
                a, b = scene.shapes[i], edit.target.shapes[i]
                assert (a.cell, a.size) == (b.cell, b.size) and (a.color != b.color) == (edit_type == "color")
            names = [s.name for s in edit.target.shapes]
            assert len(names) == len(set(names)), "objects stay uniquely named"


def test_examples_are_a_function_of_the_seed_and_round_trip():
    a, b = sample_example(123), sample_example(123)
    assert a == b and torch.equal(render(a[0]), render(b[0]))
    assert Scene.from_dict(a[0].to_dict()) == a[0]
    img = render(a[0])
    assert img.shape == (3, 64, 64) and 0 <= img.min() and img.max() <= 1


def test_oracle_separates_target_copy_and_damage():
    for seed in range(40):
        scene, edit = sample_example(seed)
        right = score(render(edit.target), scene, edit)
        copy = score(render(scene), scene, edit)
        assert right["success"] == 1 and right["preservation"] == 1
        assert copy["success"] == 0 and copy["preservation"] == 1
        damaged = render(edit.target)
        damaged[:, :, :32] = (damaged[:, :, :32] + 0.3) % 1.0  # left half recoloured
        assert score(damaged, scene, edit)["preservation"] < 0.75


def test_oracle_needs_the_new_shape_not_just_the_old_one_gone():
    """Erasing the named shape is a removal, not a recolour or a kind change."""
    for edit_type in ("replace", "color"):
        for seed in range(20):
            scene, edit = sample_example(seed, edit_type)
            erased = replace(scene, shapes=tuple(s for j, s in enumerate(scene.shapes) if j not in edit.changed))
            assert score(render(erased), scene, edit)["success"] == 0, edit.instruction


def test_oracle_scene_score_refuses_what_success_and_preservation_let_through():
    """An edit done right while an untouched shape changed colour: success 1 and preservation above 0.9 (pixel
    shares), but the strict `scene` score is 0; the correct target scores scene 1."""
    checked = 0
    for seed in range(40):
        scene, edit = sample_example(seed, "color")
        others = [j for j in range(len(scene.shapes)) if j not in edit.changed]
        if not others:
            continue
        j = others[0]
        used = {s.color for s in edit.target.shapes}
        recoloured = replace(edit.target.shapes[j], color=next(c for c in COLORS if c not in used))
        wrong = replace(edit.target, shapes=tuple(recoloured if k == j else s for k, s in enumerate(edit.target.shapes)))
        right, bad = score(render(edit.target), scene, edit), score(render(wrong), scene, edit)
        assert right["scene"] == 1 and right["success"] == 1
        assert bad["success"] == 1 and bad["preservation"] > 0.9 and bad["scene"] == 0, edit.instruction
        checked += 1
    assert checked >= 10


def test_scene_oracle_accepts_the_caption_and_refuses_each_wrong_part():
    # The teacher's check: a render of the caption's scene passes; one wrong colour, kind, background,
    # a missing or an extra shape fails. Measured on seeds 0-99: 98 renders pass (a small circle and a
    # small square can fit each other's template), 1 kind swap passes, none of the other faults.
    wrong = {"kind": 0, "colour": 0, "background": 0, "missing": 0, "extra": 0}
    passed, n = 0, 40
    for i in range(n):
        scene = sample_scene(random.Random(i))
        first, rest = scene.shapes[0], scene.shapes[1:]
        free = next(c for c in range(9) if c not in {s.cell for s in scene.shapes})
        passed += scene_match(render(scene), scene)["scene"]
        faults = {
            "kind": replace(scene, shapes=(replace(first, kind=next(k for k in KINDS if k != first.kind)), *rest)),
            "colour": replace(scene, shapes=(replace(first, color=next(c for c in COLORS if c != first.color)), *rest)),
            "background": replace(scene, background=next(b for b in BACKGROUNDS if b != scene.background)),
            "missing": replace(scene, shapes=rest),
            "extra": replace(scene, shapes=(*scene.shapes, Shape("red", "circle", "small", free))),
        }
        for name, bad in faults.items():
            wrong[name] += scene_match(render(bad), scene)["scene"]
    assert passed >= n - 2, passed
    assert sum(wrong.values()) <= 2, wrong
    assert scene_match(torch.full((3, 64, 64), 0.5), scene)["scene"] is False  # a grey picture shows nothing


def test_tokenizer_has_single_token_answers_and_covers_the_world(tmp_path):
    from npedit_core.microworld.tokenizer import train_tokenizer
    from npedit_core.microworld.world import corpus

    tok = train_tokenizer(tmp_path / "tok")
    for word in ("Yes", "No"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1
    unk = tok.convert_tokens_to_ids("[UNK]")
    for text in corpus(200, seed=7):
        assert unk not in tok.encode(text, add_special_tokens=False), text


def test_manifest_holds_references_only_and_reads_back(tmp_path):
    from npedit_core.microworld.editor import examples, write_manifest

    items = examples(6)
    path = write_manifest(tmp_path, items)
    records = read_manifest(path, require_source_caption=True)
    assert [r.instruction for r in records] == [e.instruction for _, e in items]
    assert len(list((tmp_path / "images").iterdir())) == 6  # one reference per row, no targets
