"""The micro-world's own autoencoder: the TAEF2 architecture, narrower, trained here on the world's scenes.

    python -m npedit_core.microworld.autoencoder --out npedit_core/microworld/weights/teacher/vae

writes `taef2_encoder.safetensors` and `taef2_decoder.safetensors` (TAEF2's keys at width 16, ~0.2 MB
each) and `train_log.json`. The teacher folder's `npedit_backbone.json` {"vae": "taef2"} loads them as
it would load the pretrained TAEF2 (`Flux2KleinBackbone.from_pretrained` prefers vae/), so the world
needs nothing outside the repository; the pretrained TAEF2 stays the decoder for real FLUX.2 models.

Latents have FLUX.2's layout (32 channels at 1/8, 128 after the 2x2 patchify) and are pulled towards
zero mean and unit spread per channel, like the BN-normalised latents the real transformer sees; the
decoder learns from slightly noised latents, so the imperfect latents of a few-step sampler still
decode to clean flat colours. Errors on shapes weigh SHAPE_WEIGHT times those on the background (the
background is most of a scene; unweighted, the round trip keeps colours but loses the kinds of shapes).
`train_log.json` records the held-out round trip: PSNR, the share of pixels within 0.1, and the share of
scenes (and of shapes) the scene oracle still recognises (the pretrained TAEF2: 31.5 dB, 0.973, 0.99, 0.995).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbones.taef2 import DECODER_FILE, ENCODER_FILE, TAEF2Decoder, TAEF2Encoder
from .world import render_batch, sample_example

WIDTH = 16
EVAL_SEED_BASE = 10**8  # the editors' evaluation seeds: never trained on
LATENT_NOISE = 0.05  # std of the noise added to latents before decoding, in training
STATS_WEIGHT = 0.01  # weight of the per-channel mean^2 + (std - 1)^2 pull
SHAPE_WEIGHT = 5.0  # squared errors on and around shapes count this many times those on the background


def shape_weights(x: torch.Tensor, weight: float = SHAPE_WEIGHT) -> torch.Tensor:
    """(B, 1, H, W): `weight` on pixels off each image's background colour (its median) and 1 px around, else 1.

    Shapes cover a few percent of a scene: with a plain MSE the background dominates and the
    decoder learns blobs of roughly the right colour (a round trip the scene oracle rejects).
    """
    background = x.flatten(2).median(-1).values[..., None, None]
    off = ((x - background).abs().amax(1, keepdim=True) > 0.05).float()
    return 1 + (weight - 1) * F.max_pool2d(off, 3, 1, 1)


def scenes_for(n: int, base: int) -> torch.Tensor:
    """Rendered sources and edited targets of examples base..: both what editors read and what they should write."""
    items = [sample_example(base + i) for i in range(n // 2)]
    return render_batch([s for s, _ in items] + [e.target for _, e in items])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b)))


@torch.no_grad()
def measure(encoder, decoder, images: torch.Tensor) -> dict:
    """Round-trip PSNR and the share of pixels kept within 0.1 (the oracle's preservation threshold)."""
    out = torch.cat([decoder(encoder(images[i:i + 128])).clamp(0, 1) for i in range(0, len(images), 128)])
    z = torch.cat([encoder(images[i:i + 128]) for i in range(0, len(images), 128)])
    return {"psnr": round(psnr(out, images), 2), **round_trip_scenes(encoder, decoder),
            "kept_pixels": round(float(((out - images).abs().amax(1) < 0.1).float().mean()), 4),
            "latent_mean": round(float(z.mean()), 3), "latent_std": round(float(z.std()), 3)}


@torch.no_grad()
def round_trip_scenes(encoder, decoder, n: int = 100) -> dict:
    """Share of `n` held-out scenes whose round trip the scene oracle still finds right (every shape's
    colour, kind and cell, and the background): what the teacher's samples can reach at best."""
    from .oracle import scene_match

    scenes = [sample_example(EVAL_SEED_BASE + i)[0] for i in range(n)]
    found = [scene_match(y, s) for y, s in zip(decoder(encoder(render_batch(scenes))).clamp(0, 1), scenes)]
    shapes = [ok for f in found for ok in f["shapes"]]
    return {"scene_ok": sum(f["scene"] for f in found) / n, "shape_ok": round(sum(shapes) / len(shapes), 3)}


def _fit(encoder, decoder, data: torch.Tensor, steps: int, batch: int, lr: float, gen, log, stage: str,
         shape_weight: float = SHAPE_WEIGHT) -> None:
    """AdamW with warm-up + cosine. stage "joint" trains both halves; "decoder" only the decoder, on cached latents."""
    joint = stage == "joint"
    encoder.requires_grad_(joint), decoder.requires_grad_(True)
    params = [*(encoder.parameters() if joint else ()), *decoder.parameters()]
    if not joint:  # the latent space is fixed now (a teacher may already be training in it)
        with torch.no_grad():
            latents = torch.cat([encoder(x[i:i + 256]) for x in (data, data.flip(-1)) for i in range(0, len(x), 256)])
        data = torch.cat([data, data.flip(-1)])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    ema = None
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        x = data[idx]
        if joint:
            if torch.rand((), generator=gen) < 0.5:  # mirrored scenes: the same world, twice the variety
                x = x.flip(-1)
            z = encoder(x)
        else:
            z = latents[idx]
        noisy = z + LATENT_NOISE * torch.randn(z.shape, generator=gen)
        err = (decoder(noisy) - x) ** 2
        recon = err.mean()  # logged: the plain MSE
        loss = (err * shape_weights(x, shape_weight)).mean()
        if joint:
            mean, std = z.mean((0, 2, 3)), z.std((0, 2, 3))
            loss = loss + STATS_WEIGHT * (mean.pow(2).mean() + (std - 1).pow(2).mean())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = recon.item() if ema is None else 0.98 * ema + 0.02 * recon.item()
        if step % 200 == 0 or step == steps - 1:
            log(f"  autoencoder ({stage}) step {step}: mse {recon.item():.5f} (ema {ema:.5f}, {-10 * math.log10(ema):.1f} dB)")


def build(out: str | Path, steps: int = 4000, decoder_steps: int = 0, seed: int = 0, width: int = WIDTH,
          batch: int = 16, lr: float = 2e-3, n_data: int = 4000, init_from: str | Path | None = None,
          decoder_width: int | None = None, shape_weight: float = SHAPE_WEIGHT, log=print) -> dict:
    """Train `steps` steps of both halves, then `decoder_steps` of the decoder alone; write `out`.

    decoder_width: the decoder's width when it differs from the encoder's (None: the same); a decoder of
    another width than `init_from`'s starts afresh (the latents it reads stay those of `init_from`).
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(seed)
    if init_from is not None:  # continue another build's training (a fresh warm-up + cosine)
        from ..backbones.taef2 import TAEF2

        taef2 = TAEF2.from_files(init_from)
        encoder, decoder = taef2.encoder, taef2.decoder
        width = encoder[0].weight.shape[0]
        if decoder_width not in (None, decoder[1].weight.shape[0]):
            decoder = TAEF2Decoder(width=decoder_width)
    else:
        encoder, decoder = TAEF2Encoder(width=width), TAEF2Decoder(width=decoder_width or width)
    encoder.train(), decoder.train()
    data, held_out = scenes_for(n_data, seed * 1_000_003), scenes_for(256, EVAL_SEED_BASE)
    gen = torch.Generator().manual_seed(seed)
    if steps:
        _fit(encoder, decoder, data, steps, batch, lr, gen, log, "joint", shape_weight)
    if decoder_steps:
        _fit(encoder, decoder, data, decoder_steps, batch, lr, gen, log, "decoder", shape_weight)
    encoder.eval(), decoder.eval()
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()},
              str(out / (Path(ENCODER_FILE).stem + ".safetensors")))
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()},
              str(out / (Path(DECODER_FILE).stem + ".safetensors")))
    report = {"seed": seed, "steps": steps, "decoder_steps": decoder_steps, "width": width,
              "decoder_width": decoder[1].weight.shape[0], "batch": batch, "lr": lr,
              "n_data": n_data, "shape_weight": shape_weight, "held_out": measure(encoder, decoder, held_out),
              "params": sum(p.numel() for m in (encoder, decoder) for p in m.parameters()),
              "seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads(),
              "continued_from": None if init_from is None else json.loads((Path(init_from) / "train_log.json").read_text())}
    (out / "train_log.json").write_text(json.dumps(report, indent=2))
    log(f"autoencoder: {report}")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4000, help="steps of both halves")
    ap.add_argument("--decoder-steps", type=int, default=0, help="then steps of the decoder alone (latents fixed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=WIDTH)
    ap.add_argument("--decoder-width", type=int, default=None, help="the decoder's width (default: --width)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--shape-weight", type=float, default=SHAPE_WEIGHT, help="loss weight of shape pixels (1: plain MSE)")
    ap.add_argument("--init-from", default=None, help="an earlier --out folder whose training continues")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = ap.parse_args(argv)
    widths = (a.width, a.decoder_width or a.width)
    if a.steps < 0 or a.decoder_steps < 0 or a.batch < 1 or any(w < 4 or w % 4 for w in widths):
        ap.error("--steps and --decoder-steps must be >= 0, --batch >= 1 and the widths multiples of 4 (GroupNorm's 4 groups)")
    if a.threads:
        torch.set_num_threads(a.threads)
    build(a.out, a.steps, a.decoder_steps, a.seed, a.width, a.batch, a.lr, init_from=a.init_from,
          decoder_width=a.decoder_width, shape_weight=a.shape_weight)


if __name__ == "__main__":
    main()
