"""The world's text encoder learns the world's language before the teacher reads it.

FLUX.2 reads the hidden states of a pretrained Qwen3, in which "blue" at the end of "make the red circle blue"
already stands for the new colour of the red circle. A random frozen Qwen3 gives every word the same features
wherever it stands: measured on the teacher shipped before, "circle" in "make the red circle blue" and in "make
the blue circle red" had cosine 1.000 over all three layers read, and so did every token but the two colour
words. The DiT then had to bind colours to shapes and places from rope positions alone, and the world's models
did not: the teacher drew 0.36 of held-out captions right, and supervised training on true pairs recoloured 0.14
of held-out shapes after 3000 recolour-only steps (outputs in the wrong colour, often one the instruction never
names).

`pretrain` trains the Qwen3's weights (not the tokenizer) so that every position of a prompt, as
`Flux2KleinBackbone.encode_text` feeds it (chat template, padded to max_sequence_length), says through linear
read-outs of exactly the features FLUX.2 reads (hidden states 1, 2, 3, concatenated) what the whole text means
(`meaning`): the background and each grid cell's colour, kind and size of a caption; the type, the named object
and the new colour, kind, background, cell or size of an instruction. A causal position cannot know what comes
after it, so it learns what its prefix says; the last positions (end of turn, the generation prompt, the padding)
hold all of it. The read-outs are dropped afterwards: the folder holds an ordinary `Qwen3ForCausalLM`.
"""

from __future__ import annotations

import math
import random
import time

import torch
import torch.nn.functional as F

from .world import BACKGROUNDS, COLORS, EDIT_TYPES, KINDS, SIZES, sample_example, sample_scene

NONE = "none"
COLOUR_CLASSES, KIND_CLASSES = [NONE, *COLORS], [NONE, *KINDS]
SIZE_CLASSES, BACKGROUND_CLASSES = [NONE, *SIZES], [NONE, *BACKGROUNDS]
#: field -> its classes ("none": the text does not say)
FIELDS = {
    "background": BACKGROUND_CLASSES,
    **{f"cell{c}_{part}": classes for c in range(9)
       for part, classes in (("colour", COLOUR_CLASSES), ("kind", KIND_CLASSES), ("size", SIZE_CLASSES))},
    "edit": [NONE, *EDIT_TYPES],
    "object_colour": COLOUR_CLASSES, "object_kind": KIND_CLASSES,
    "new_colour": COLOUR_CLASSES, "new_kind": KIND_CLASSES, "new_background": BACKGROUND_CLASSES,
    "new_cell": [NONE, *map(str, range(9))], "new_size": SIZE_CLASSES,
}


def meaning(scene=None, edit=None) -> dict[str, str]:
    """What a caption (`scene`) or an instruction (`edit`, with its source `scene`) says, field by field."""
    out = {name: NONE for name in FIELDS}
    if edit is None:
        if scene is not None:
            out["background"] = scene.background
            for s in scene.shapes:
                out.update({f"cell{s.cell}_colour": s.color, f"cell{s.cell}_kind": s.kind, f"cell{s.cell}_size": s.size})
        return out
    out["edit"] = edit.edit_type
    if edit.edit_type == "background":
        out["new_background"] = edit.target.background
    elif edit.edit_type == "add":
        new = edit.target.shapes[-1]
        out.update(new_colour=new.color, new_kind=new.kind, new_size=new.size, new_cell=str(new.cell))
    else:
        old = scene.shapes[edit.changed[0]]
        out.update(object_colour=old.color, object_kind=old.kind)
        if edit.edit_type != "remove":
            new = edit.target.shapes[edit.changed[0]]
            out.update(new_colour=new.color if edit.edit_type == "color" else NONE,
                       new_kind=new.kind if edit.edit_type == "replace" else NONE)
    return out


def sample_text(rng: random.Random, negative: str) -> tuple[str, dict[str, str]]:
    """A caption (45 %: a source scene, 10 %: an edited scene), an instruction (40 %) or the negative prompt (5 %)."""
    r = rng.random()
    if r < 0.05:
        return negative, meaning()
    scene, edit = sample_example(rng.randrange(2**62))
    if r < 0.5:
        return scene.caption(), meaning(scene)
    if r < 0.6:
        return edit.target.caption(), meaning(edit.target)
    if r < 0.95:
        return edit.instruction, meaning(scene, edit)
    scene = sample_scene(rng)
    return scene.caption(), meaning(scene)


def encode(text_encoder, tokenizer, texts: list[str], max_len: int, layers=(1, 2, 3)) -> torch.Tensor:
    """(B, L, len(layers) * D) features as `Flux2KleinBackbone.encode_text` makes them, with gradients."""
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=False) for t in texts]
    enc = tokenizer(rendered, return_tensors="pt", padding="max_length", truncation=True, max_length=max_len)
    base = getattr(text_encoder, "model", text_encoder)
    out = base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True,
               use_cache=False)
    return torch.cat([out.hidden_states[k] for k in layers], -1)


def _targets(meanings: list[dict[str, str]]) -> torch.Tensor:
    return torch.tensor([[FIELDS[f].index(m[f]) for f in FIELDS] for m in meanings])


def _fan_in_init(model) -> None:
    """Weights ~ N(0, 1/fan_in), so that attention mixes positions from the first step (0.02 keeps it uniform)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.weight.shape[1] ** -0.5)


def pretrain(text_encoder, tokenizer, max_len: int, negative: str, steps: int = 1500, batch: int = 64,
             lr: float = 3e-3, seed: int = 0, log=print) -> dict:
    """Train `text_encoder` in place on the world's texts (module docstring); returns a report with held-out
    accuracy of every field read at the last position (the padding after the prompt)."""
    torch.manual_seed(seed)
    _fan_in_init(text_encoder)
    width = text_encoder.config.hidden_size * 3
    heads = torch.nn.ModuleDict({f: torch.nn.Linear(width, len(c)) for f, c in FIELDS.items()})
    params = list(text_encoder.parameters()) + list(heads.parameters())
    text_encoder.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(seed)
    start, ema = time.perf_counter(), None
    for step in range(steps):
        texts, meanings = zip(*(sample_text(rng, negative) for _ in range(batch)))
        feats = encode(text_encoder, tokenizer, list(texts), max_len)  # (B, L, W)
        target = _targets(meanings)  # (B, F)
        loss = sum(F.cross_entropy(head(feats).flatten(0, 1), target[:, k].repeat_interleave(feats.shape[1]))
                   for k, head in enumerate(heads.values())) / len(heads)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"  text encoder step {step}: loss {ema:.4f} ({time.perf_counter() - start:.0f} s)")
    text_encoder.eval().requires_grad_(False)
    return {"steps": steps, "batch": batch, "lr": lr, "seconds": round(time.perf_counter() - start, 1),
            "final_loss_ema": round(ema, 4), **read_out(text_encoder, tokenizer, heads, max_len, negative, seed)}


@torch.no_grad()
def read_out(text_encoder, tokenizer, heads, max_len: int, negative: str, seed: int = 0, n: int = 500) -> dict:
    """On `n` held-out texts, read at the last position: the share of the fields a text does say that the heads
    read right, and the share of texts read right in every field."""
    rng = random.Random(10**9 + seed)
    texts, meanings = zip(*(sample_text(rng, negative) for _ in range(n)))
    last = encode(text_encoder, tokenizer, list(texts), max_len)[:, -1]
    target = _targets(meanings)
    right = torch.stack([head(last).argmax(-1) == target[:, k] for k, head in enumerate(heads.values())], 1)
    said = target != 0  # class 0 is "none"
    return {"held_out_said_fields_right": round(right[said].float().mean().item(), 4),
            "held_out_texts_right": round(right.all(1).float().mean().item(), 4)}
