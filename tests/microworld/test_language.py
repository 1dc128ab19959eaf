"""The world's text encoder learns what a prompt says, so the DiT reads bound features, not a bag of words."""

from __future__ import annotations

import random

import torch

from npedit_core.microworld.language import FIELDS, NONE, encode, meaning, pretrain
from npedit_core.microworld.teacher import NEGATIVE_PROMPT, build_text_encoder
from npedit_core.microworld.tokenizer import train_tokenizer
from npedit_core.microworld.world import Scene, Shape, sample_edit

SCENE = Scene("pink", (Shape("red", "circle", "small", 0), Shape("blue", "square", "large", 4)))


def _edit(kind: str):
    rng = random.Random(0)
    return sample_edit(SCENE, rng, kind)


def test_meaning_says_what_each_text_says_and_nothing_else():
    caption = meaning(SCENE)
    assert caption["background"] == "pink" and caption["edit"] == NONE
    assert (caption["cell0_colour"], caption["cell0_kind"], caption["cell0_size"]) == ("red", "circle", "small")
    assert (caption["cell4_colour"], caption["cell4_kind"], caption["cell4_size"]) == ("blue", "square", "large")
    assert caption["cell1_colour"] == NONE
    for kind in ("color", "remove", "add", "replace", "background"):
        edit = _edit(kind)
        said = {k: v for k, v in meaning(SCENE, edit).items() if v != NONE}
        words = edit.instruction.replace("centre", "4").split()
        assert said.pop("edit") == kind
        for field, value in said.items():  # every field an instruction sets is one of its words (cells: by name)
            assert value in words or field == "new_cell", (edit.instruction, field, value)
    recolour = _edit("color")
    old = SCENE.shapes[recolour.changed[0]]
    m = meaning(SCENE, recolour)
    assert (m["object_colour"], m["object_kind"]) == (old.color, old.kind)
    assert m["new_colour"] == recolour.target.shapes[recolour.changed[0]].color and m["new_kind"] == NONE
    assert set(meaning()) == set(FIELDS) and set(meaning().values()) == {NONE}


def test_pretraining_makes_features_depend_on_the_words_around_them():
    tok = train_tokenizer(None, 0)
    prompts = ["make the red circle blue", "make the blue circle red"]
    circle = 5  # "<|im_start|> user make the red circle ...": the same word after either colour

    def circle_change(encoder):  # |f(circle after red) - f(circle after blue)| / |f(circle after red)|
        with torch.no_grad():
            f = encode(encoder, tok, prompts, 37)
        return float((f[0, circle] - f[1, circle]).norm() / f[0, circle].norm())

    assert tok.convert_ids_to_tokens(tok(tok.apply_chat_template(
        [{"role": "user", "content": prompts[0]}], tokenize=False, add_generation_prompt=True))["input_ids"])[circle] == "circle"
    encoder = build_text_encoder(len(tok), 0, tok.pad_token_id, tok.eos_token_id)
    assert circle_change(encoder) < 0.01  # random and frozen: a bag of words (measured 0.005)
    torch.manual_seed(0)
    report = pretrain(encoder, tok, 37, NEGATIVE_PROMPT, steps=400, batch=32, log=lambda *a: None)
    assert circle_change(encoder) > 0.05  # measured 0.10 after 150 steps
    # what the prompt says is read from its last position (the padding): chance is about 0.15, measured 0.48
    assert report["held_out_said_fields_right"] > 0.35, report
    assert not any(p.requires_grad for p in encoder.parameters())
