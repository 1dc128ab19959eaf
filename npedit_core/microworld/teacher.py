"""The micro-world's text-to-image teacher: a small FLUX.2-klein (`Flux2KleinBackbone`), trained here.

    python -m npedit_core.microworld.teacher --out npedit_core/microworld/weights/teacher

builds, from a seed and in about half an hour on 2 CPU cores (autoencoder, then transformer), a diffusers
folder that `Flux2KleinBackbone.from_pretrained` (and so `model.path=...` in any config) loads like a real
FLUX.2-klein checkpoint:

- tokenizer/     the world's word-level tokenizer (tokenizer.py)
- text_encoder/  `Qwen3ForCausalLM`, 3 layers, hidden 32, random and frozen (FLUX.2 reads its hidden
                 states 1, 2, 3; distinct prompts give distinct features, and the DiT learns to read them)
- vae/           the world's own autoencoder (autoencoder.py): the TAEF2 architecture at width 16,
                 trained on the world's scenes, loaded as `taef2.TAEF2AsFlux2VAE`: 32 latent channels at
                 1/8, 128 after the 2x2 patchify, as the real FLUX.2 VAE, so the folder needs nothing
                 outside the repository. (A tiny `AutoencoderKLFlux2` trained here reached only 16 dB
                 after 300 CPU steps; `--vae-from` reuses an autoencoder folder instead of training one.)
- transformer/   `Flux2Transformer2DModel`, 2 double + 2 single blocks, 4 heads of 32, trained by flow
                 matching on (caption, image) of random scenes; 10 % of captions are replaced by the
                 DMD negative prompt, which thereby becomes the unconditional prompt for CFG
- npedit_backbone.json  text_layers (1, 2, 3) and max_sequence_length (prompts are padded to it)
- train_log.json  seeds, steps, wall-clock times and final metrics

A 64x64 image is 4x4 = 16 latent tokens of 128 channels.

The shipped teacher is this build (3000 steps) trained on with `--resume-from` for 6000 steps at lr 5e-4
(scene accuracy 0.17 -> 0.36; its train_log.json keeps both logs). Each continuation draws its scenes and noise
from seed + the number of builds it continues. 12000 more steps at lr 5e-4 on 20000 fresh scenes reached 0.45
(shapes 0.62; `--resume-from weights/teacher --steps 12000 --n-data 20000 --lr 5e-4`, 47 min on one thread), but
the warm-up rebuilt on it copied no better (preservation 0.871, 26.5 dB against 0.899, 28.0) nor the NP-Edit
editor on that (success 0.18, scene right 0.02 against 0.16, 0.06), so it is not shipped. `--size 96` (6x6
tokens, which tile the 3x3 grid) was tried: 0.06 after 3000 steps, against 0.17 at 64 px.

The random text encoder gives a word the same features wherever it stands ("circle" in "make the red circle
blue" and in "make the blue circle red": relative difference 0.005 over the three layers read), so the DiT binds
colour, kind and place from rope positions alone. A text encoder trained on the world's language first was
tried (measured, not kept): its 3 x 32 Qwen3 trained 3000 steps so that linear read-outs of the features FLUX.2
reads tell, at each word, what the word's phrase says (a shape's colour, kind, size and cell; an instruction's
type, object and new value; at the last word of a phrase 0.96 of those fields read right, the "circle" difference
0.62). The teacher trained 3000 steps on it drew 0.17 of held-out captions right (backgrounds 0.96, shapes 0.33,
loss 0.1997) against 0.17 (0.92, 0.32, 0.1994) on the random encoder; with every word reading out the whole
scene instead, 0.06 (0.84, 0.12). Binding words is not what holds the teacher back at this size.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbones.flux2_klein import BACKBONE_OPTIONS_FILE, Flux2KleinBackbone, _KLEIN_TRANSFORMER_COMMON
from .autoencoder import build as build_autoencoder
from .tokenizer import train_tokenizer
from .world import SIZE, render_batch, sample_example, sample_scene

TEXT_HIDDEN = 32
TEXT_LAYERS = (1, 2, 3)
NEGATIVE_PROMPT = "low quality, artifacts"  # config.LossConfig.negative_prompt
EVAL_SEED_BASE = 10**8  # held-out scenes (the editors' evaluation seeds; the teacher trains on seeds near 0)


def build_text_encoder(vocab_size: int, seed: int, pad_id: int = 0, eos_id: int = 2):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id,
    ))
    with torch.no_grad():  # unit-scale word vectors: the default 0.02 init would hand the DiT tiny features
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    return model.eval()


def build_transformer(seed: int):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(**{
        **_KLEIN_TRANSFORMER_COMMON, "num_layers": 2, "num_single_layers": 2, "num_attention_heads": 4,
        "attention_head_dim": 32, "axes_dims_rope": (8, 8, 8, 8), "joint_attention_dim": len(TEXT_LAYERS) * TEXT_HIDDEN,
    })


def random_images(n: int, rng: random.Random) -> torch.Tensor:
    return render_batch([sample_scene(rng) for _ in range(n)])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b)))


def sample_train_t(n: int, gen) -> torch.Tensor:
    """Half logit-normal (mid times), half uniform (covers both ends, where DMD and the 1-step editor live)."""
    t = torch.sigmoid(torch.randn(n, generator=gen))
    u = torch.rand(n, generator=gen)
    return torch.where(torch.rand(n, generator=gen) < 0.5, t, u)


def train_teacher(backbone: Flux2KleinBackbone, steps: int, seed: int, n_data: int = 10000, batch: int = 32,
                  lr: float = 1e-3, size: int = SIZE, log=print) -> dict:
    """Flow matching v = eps - x0 on (caption, latent) of `n_data` random scenes; AdamW, warm-up + cosine."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    scenes = [sample_example(seed * 1_000_003 + i)[0] for i in range(n_data)]
    with torch.no_grad():
        latents = torch.cat([backbone.encode_images(render_batch(scenes[i:i + 256], size)) for i in range(0, n_data, 256)])
        captions = [s.caption() for s in scenes] + [NEGATIVE_PROMPT]
        text = torch.cat([backbone.encode_text(captions[i:i + 256]).embeds for i in range(0, len(captions), 256)])
    log(f"  teacher data: {n_data} scenes, latents std {latents.std():.3f}")
    model = backbone.transformer
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    from ..backbones.base import TextEmbeds
    ema = None
    for step in range(steps):
        idx = torch.randint(0, n_data, (batch,), generator=gen)
        x0 = latents[idx]
        drop = torch.rand(batch, generator=gen) < 0.1
        tidx = torch.where(drop, torch.full_like(idx, n_data), idx)
        t = sample_train_t(batch, gen)
        eps = torch.randn(x0.shape, generator=gen)
        tb = t.view(-1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * eps
        v = backbone.velocity(x_t, t, TextEmbeds(text[tidx]))
        loss = F.mse_loss(v, eps - x0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"  teacher step {step}: loss {loss.item():.4f} (ema {ema:.4f})")
    model.eval().requires_grad_(False)
    return {"teacher_final_loss_ema": round(ema, 5)}


@torch.no_grad()
def generate(backbone: Flux2KleinBackbone, captions: list[str], steps: int = 16, guidance: float = 3.5,
             seed: int = 0, size: int = SIZE) -> torch.Tensor:
    """Text-to-image samples (N, 3, S, S): Euler from noise on the shifted schedule, CFG against the negative prompt."""
    from ..backbones.base import TextEmbeds
    from ..sampler import edit_schedule

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((len(captions), *backbone.latent_shape(size, size)), generator=gen)
    cond, uncond = backbone.encode_text(captions).embeds, backbone.encode_text([NEGATIVE_PROMPT]).embeds
    uncond = uncond.expand(len(captions), *uncond.shape[1:])
    sigmas = edit_schedule(steps, shift=3.0) + [0.0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        t = torch.full((len(captions),), s)
        v_c, v_u = backbone.velocity(x, t, TextEmbeds(cond)), backbone.velocity(x, t, TextEmbeds(uncond))
        x = x + (s_next - s) * (v_u + guidance * (v_c - v_u))
    return backbone.decode_latents(x).clamp(0, 1)


def scene_accuracy(backbone: Flux2KleinBackbone, n: int = 100, seed: int = 0, **kwargs) -> dict:
    """Share of `n` held-out captions whose sample the oracle finds right (oracle.scene_match), overall and per part."""
    from .oracle import scene_match

    scenes = [sample_example(EVAL_SEED_BASE + i)[0] for i in range(n)]
    images = torch.cat([generate(backbone, [s.caption() for s in scenes[i:i + 50]], seed=seed + i, **kwargs)
                        for i in range(0, n, 50)])
    found = [scene_match(img, s) for img, s in zip(images, scenes)]
    shapes = [ok for f in found for ok in f["shapes"]]
    return {"n": n, "scene": sum(f["scene"] for f in found) / n,
            "background": sum(f["background"] for f in found) / n, "shape": sum(shapes) / max(1, len(shapes))}


def build(out: str | Path, steps: int = 3000, seed: int = 0, lr: float = 1e-3, resume_from: str | Path | None = None,
          vae_from: str | Path | None = None, n_data: int = 10000, size: int = SIZE, log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"seed": seed, "teacher_steps": steps, "n_data": n_data, "image_size": size}
    start = time.perf_counter()
    tokenizer = train_tokenizer(out / "tokenizer", seed)
    # Prompts are padded to max_sequence_length and truncated beyond it: measure the longest chat-formatted
    # caption (token ids of the rendered template; apply_chat_template(tokenize=True) returns a dict in
    # transformers 5, whose len() is its number of keys).
    texts = [sample_example(i)[k].caption() if k == 0 else sample_example(i)[1].target.caption()
             for i in range(2000) for k in (0, 1)]
    lengths = [len(tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                                           add_generation_prompt=True))["input_ids"]) for c in texts]
    max_len = max(lengths) + 2
    options = {"text_layers": list(TEXT_LAYERS), "max_sequence_length": max_len, "vae": "taef2"}
    (out / BACKBONE_OPTIONS_FILE).write_text(json.dumps(options))
    text_encoder = build_text_encoder(len(tokenizer), seed, tokenizer.pad_token_id, tokenizer.eos_token_id)
    text_encoder.save_pretrained(str(out / "text_encoder"))

    # The world's own autoencoder in vae/, found there by npedit_backbone.json's {"vae": "taef2"}.
    if vae_from is not None:
        shutil.copytree(Path(vae_from), out / "vae", dirs_exist_ok=True)
    else:
        report["autoencoder"] = build_autoencoder(out / "vae", seed=seed, log=log)

    if resume_from is None:
        transformer = build_transformer(seed)
        transformer.save_pretrained(str(out / "transformer"))  # so the folder loads during training
    else:  # continue training another build's transformer (e.g. more steps at a lower learning rate)
        shutil.copytree(Path(resume_from) / "transformer", out / "transformer", dirs_exist_ok=True)
        report["resumed_from"] = json.loads((Path(resume_from) / "train_log.json").read_text())
    # each continuation trains on fresh scenes and noise: seed + how many builds this one continues
    depth, log_ = 0, report
    while "resumed_from" in log_:
        depth, log_ = depth + 1, log_["resumed_from"]
    backbone = Flux2KleinBackbone.from_pretrained(str(out), dtype=torch.float32)
    transformer = backbone.transformer
    t0 = time.perf_counter()
    report.update(train_teacher(backbone, steps, seed + depth, n_data, lr=lr, size=size, log=log))
    report["teacher_seconds"] = round(time.perf_counter() - t0, 1)
    transformer.register_to_config(_name_or_path="transformer")  # from_pretrained recorded this machine's path
    transformer.save_pretrained(str(out / "transformer"))
    report["scene_accuracy"] = scene_accuracy(backbone, size=size)  # 16 Euler steps, CFG 3.5, held-out captions
    report["params"] = {name: sum(p.numel() for p in getattr(backbone, name).parameters())
                        for name in ("transformer", "vae", "text_encoder")}
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    report["torch_threads"] = torch.get_num_threads()
    (out / "train_log.json").write_text(json.dumps(report, indent=2))
    log(f"teacher: {report}")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--n-data", type=int, default=10000, help="distinct training scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--resume-from", default=None, help="a previous --out folder whose transformer training continues")
    ap.add_argument("--vae-from", default=None, help="an autoencoder folder (autoencoder.py's --out) to copy, not train")
    ap.add_argument("--size", type=int, default=SIZE, help="image side in pixels (a multiple of 16)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = ap.parse_args(argv)
    if a.steps < 1:
        ap.error(f"--steps must be at least 1, got {a.steps}")
    if a.size < 16 or a.size % 16:
        ap.error(f"--size must be a positive multiple of 16 (the autoencoder's 8x and the 2x2 patches), got {a.size}")
    if a.threads:
        torch.set_num_threads(a.threads)
    build(a.out, a.steps, a.seed, a.lr, a.resume_from, a.vae_from, a.n_data, a.size)


if __name__ == "__main__":
    main()
