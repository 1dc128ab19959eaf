"""The built-in demo (`python -m train_cli demo`): the whole NP-Edit method in the micro-world, on a CPU.

The micro-world (npedit_core/microworld/) is a procedurally rendered world of shapes whose pretrained
parts ship with the repository: a small FLUX.2-klein teacher trained on its scenes (with the world's
own autoencoder, TAEF2's architecture trained here), a small Qwen2.5-VL judge trained on yes/no
questions about them, and a warm-up editor. So the edits are real and checkable: an oracle computed
from the scene graph scores instruction success and preservation of the rest, before and after training.

Stage 1 warm-up (a short continuation of the shipped warm-up, with the settings of its last steps), stage 2 NP-Edit
(unroll -> decode -> judge + DMD; no edited images anywhere), export, then edit held-out scenes with
the exported editor, print the oracle's scores and write a before/after grid. About 6 minutes on 2 CPU cores.
For real models, `python -m train_cli train` with `model.path` / `judge.path` set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .config import load_config
from .export import export_checkpoint
from .previews import save_preview_grid
from .trainer import Trainer

NPEDIT_STEPS = 400  # as the CI learning test (tests/microworld/test_learning.py)
WARMUP_STEPS = 10


def run_demo(out: str | Path = "runs/demo", overrides: list[str] = (), log=print, fresh: bool = False) -> Path:
    """The demo into `out`. A folder with an earlier demo's runs is reused (said so); `fresh` starts over."""
    from .microworld.editor import (SETTINGS, WARMUP_CONTINUE, WARMUP_SETTINGS, evaluate, eval_items, examples,
                                    load_warmup, write_manifest)

    out = Path(out)
    runs = [out / "warmup", out / "npedit"]
    if fresh:
        for folder in runs + [out / "data"]:
            shutil.rmtree(folder, ignore_errors=True)
    elif any((folder / "checkpoints").is_dir() for folder in runs):
        log(f"reusing the runs in {out} (finished stages are not trained again); --fresh starts over")
    log("NP-Edit demo in the micro-world (npedit_core/microworld): shipped teacher, judge and warm-up editor.")
    items = examples(512)
    manifest = write_manifest(out / "data", items)
    evals = eval_items(10)
    common = SETTINGS + [f"data.manifest={manifest}", "train.log_every=1"]

    log(f"[1/4] warm-up: {WARMUP_STEPS} more steps of the shipped warm-up editor's recipe (its tail's settings)")
    warm = load_config(None, common + WARMUP_SETTINGS + [*WARMUP_CONTINUE,
        f"train.steps={WARMUP_STEPS}", f"train.save_every={WARMUP_STEPS}", f"train.run_dir={out / 'warmup'}",
        *overrides])
    trainer = Trainer(warm, log=log)
    if trainer.step == 0:  # a fresh run directory: start from the shipped warm-up editor
        load_warmup(trainer)
    trainer.run()
    before, before_out = evaluate(trainer.roles.editor_backbone(), evals, warm.sampler)
    _report(log, "oracle before NP-Edit", before)

    log(f"[2/4] NP-Edit ({NPEDIT_STEPS} steps): unrolled editor, judged by the VLM, kept on the manifold by DMD")
    main = load_config(None, common + [
        "train.stage=npedit", f"train.steps={NPEDIT_STEPS}", f"train.save_every={NPEDIT_STEPS}",
        f"train.run_dir={out / 'npedit'}", f"train.init_from={out / 'warmup'}", *overrides])
    trainer = Trainer(main, log=log)
    trainer.run()
    lines = [json.loads(x) for x in (out / "npedit" / "metrics.jsonl").read_text().splitlines()]
    for logs in lines[:: max(1, len(lines) // 6)] + lines[-1:]:
        terms = {k: round(v, 4) for k, v in logs.items() if k.endswith("loss") or k.startswith("p_yes")}
        log(f"  step {logs['step']}: {terms}")
    after, after_out = evaluate(trainer.roles.editor_backbone(), evals, main.sampler)
    _report(log, "oracle after NP-Edit", after)

    log("[3/4] export the editor")
    editor = export_checkpoint(out / "npedit", out / "editor.safetensors")
    log(f"  wrote {editor}")

    log("[4/4] before/after grids of held-out edits")
    grids = write_grids(out, evals, before_out, after_out)
    (out / "oracle.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
    log(f"  wrote {', '.join(p.name for p in grids)} in {out} (columns: input, target, before, after; rows listed in "
        f"demo_grid.txt) and {out / 'oracle.json'}")
    return out


def write_grids(out: Path, evals, before_out, after_out) -> list[Path]:
    """demo_grid.png (the first two edits of each type) and demo_grid_<type>.png (every edit of one type), each row
    input | target (oracle) | before NP-Edit | after NP-Edit; demo_grid.txt lists every grid's rows."""
    from .microworld.world import EDIT_TYPES, render_batch

    picks = {"": list(range(2 * len(EDIT_TYPES)))}  # eval_items cycles through the types
    picks.update({t: [i for i, (_, e) in enumerate(evals) if e.edit_type == t] for t in EDIT_TYPES})
    inputs, targets = render_batch([s for s, _ in evals]), render_batch([e.target for _, e in evals])
    grids, lines = [], ["columns: input | target (oracle) | before NP-Edit | after NP-Edit"]
    for kind, pick in picks.items():
        if not pick:
            continue
        name = f"demo_grid_{kind}.png" if kind else "demo_grid.png"
        columns = ([col[i] for i in pick] for col in (inputs, targets, before_out, after_out))
        grids.append(save_preview_grid(out / name, *columns))
        lines.append(f"{name} rows: " + "; ".join(evals[i][1].instruction for i in pick))
    (out / "demo_grid.txt").write_text("\n".join(lines) + "\n")
    return grids


def _report(log, title: str, metrics: dict) -> None:
    parts = ", ".join(f"{k} {v['success']:.2f}" for k, v in metrics.items() if k != "all")
    a = metrics["all"]
    log(f"  {title}: success {a['success']:.3f}, preservation {a['preservation']:.3f}, whole scene right "
        f"{a['scene']:.3f} (per type success: {parts})")
