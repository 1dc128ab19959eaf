"""The built-in demo (`python -m train_cli demo`): the whole NP-Edit path on a CPU in minutes.

Stage 1 warm-up (reference copy), stage 2 NP-Edit (unroll -> decode -> judge + DMD), export, then edit
the demo photos with the exported editor and write a before/after grid.

The models are tiny random-initialised components of the real classes (FLUX.2-klein backbone,
Qwen2.5-VL judge), because no pretrained model can be downloaded here: the demo shows every part
running and the losses moving, not meaningful edits. Point `model.path` / `judge.path` at local
checkpoints to run the same thing for real.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import load_config
from .data import demo_manifest, read_manifest
from .editing import edit_files
from .export import export_checkpoint
from .previews import save_preview_grid
from .editing import read_image
from .trainer import run_training

DEMO_SETTINGS = [
    "data.resolution=64",
    "train.batch_size=1",
    "train.log_every=1",
    "train.save_every=2",
    "train.preview_every=0",
    "train.gradient_checkpointing=false",
    "loss.fake_updates=1",
    "loss.logit_scale_ramp_steps=4",
    "lora.rank=4",
    "lora.alpha=4",
    "model.dtype=float32",
    "judge.dtype=float32",
    "optim.lr=1e-3",
    "optim.fake_lr=1e-3",
]


def run_demo(out: str | Path = "runs/demo", overrides: list[str] = (), log=print) -> Path:
    out = Path(out)
    data = demo_manifest(out / "data")
    common = DEMO_SETTINGS + [f"data.manifest={data}", *overrides]
    log("NP-Edit demo: tiny random models of the real classes (see npedit_core/demo.py); edits are not meaningful.")

    log("[1/4] warm-up: teach the editor to copy its reference")
    warm = load_config(None, common + ["train.stage=warmup", "train.steps=4", f"train.run_dir={out / 'warmup'}"])
    run_training(warm, log=log)

    log("[2/4] NP-Edit: unrolled editor, judged by the VLM, kept on the manifold by DMD")
    main = load_config(None, common + ["train.stage=npedit", "train.steps=4", f"train.run_dir={out / 'npedit'}",
                                       f"train.init_from={out / 'warmup'}"])
    run_training(main, log=log)
    for line in (out / "npedit" / "metrics.jsonl").read_text().splitlines():
        logs = json.loads(line)
        terms = {k: round(v, 4) for k, v in logs.items() if k.endswith("loss") or k.startswith("p_yes")}
        log(f"  step {logs['step']}: {terms}")

    log("[3/4] export the editor")
    editor = export_checkpoint(out / "npedit", out / "editor.safetensors")
    log(f"  wrote {editor}")

    log("[4/4] edit the demo photos with the exported editor")
    records = read_manifest(data)
    overrides_edit = [o for o in common if o.startswith(("model.", "sampler."))]
    edited = edit_files([str(r.image) for r in records], [r.instruction for r in records], str(out / "edits"),
                        editor=str(editor), overrides=overrides_edit)
    grid = save_preview_grid(out / "demo_grid.png", [read_image(r.image) for r in records], [read_image(p) for p in edited])
    log(f"  wrote {len(edited)} edits to {out / 'edits'} and the grid {grid}")
    return out
