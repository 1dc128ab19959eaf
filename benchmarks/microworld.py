"""The micro-world experiment: warm-up, then NP-Edit (no pairs) against its ablations and a paired baseline.

Rows (npedit_core/microworld/editor.py VARIANTS), all from the shipped warm-up editor, at equal editor
steps, batch and learning rate, each over several seeds (training seed = noise seed of the oracle's
edits): NP-Edit (judge + DMD), (a) supervised flow matching on the procedural pairs, (b) only DMD,
(c) only the VLM loss, (d) no identity question; plus the warm-up editor itself (no further training)
and (a') the supervised row at its own learning rate, 5e-4 (`supervised_lr5e-4`), where it learns faster, and NP-Edit
with a third of the judge's weight (`npedit_w_vlm1`). Each run records its settings (`settings` in the JSON).
The oracle (microworld/oracle.py) scores success and preservation per edit type on a fixed balanced
evaluation set. Writes benchmarks/results/microworld.json, microworld.md and microworld_grid.png.

    python benchmarks/microworld.py --steps 100 --seeds 0 1 2 --jobs 2

It first measures the world's own parts (autoencoder round trip, teacher scene accuracy, judge accuracy, whether
the judge sees the scene): they bound what any editor can reach here. Each row also records how the judge answers
about its outputs (`judge` in the JSON: microworld/judge.py `agreement`), where NP-Edit's signal comes from.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from npedit_core.microworld.editor import (  # noqa: E402
    VARIANTS, WARMUP_FILE, evaluate, eval_items, examples, make_trainer, write_manifest,
)
from npedit_core.microworld.judge import agreement  # noqa: E402
from npedit_core.microworld.world import EDIT_TYPES, render_batch  # noqa: E402
from npedit_core.models import build_judge  # noqa: E402
from npedit_core.previews import save_preview_grid  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run(variant: str, seed: int, steps: int, work: Path, manifest: Path, items, evals, log=print, threads: int = 0,
        quiet: bool = False, warmup: Path = WARMUP_FILE) -> dict:
    """One row x seed: the warm-up row is the NP-Edit trainer at 0 steps (the warm-up editor `warmup`).

    Every run starts afresh in `work`/ROW-sSEED: a folder left there by an earlier benchmark (other steps, another
    warm-up) is deleted, not resumed. `quiet` hides the trainer's progress bar (parallel runs' bars interleave
    unreadably); errors still raise.
    """
    if threads:
        torch.set_num_threads(threads)
    label = variant
    variant = "npedit" if variant == "warmup" else variant
    started = time.perf_counter()
    run_dir = work / f"{label}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    # the warm-up row builds the trainer like the others (configs need train.steps >= 1) and does not train
    trainer = make_trainer(variant, run_dir, manifest, items, max(steps, 1), seed, init_from=warmup, log=lambda *a: None)
    if steps:
        with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
            trainer.run()
    train_s = time.perf_counter() - started
    metrics, outputs = evaluate(trainer.roles.editor_backbone(), evals, trainer.cfg.sampler, seed=seed)
    log(f"{label} seed {seed}: success {metrics['all']['success']:.3f} preservation "
        f"{metrics['all']['preservation']:.3f} ({train_s:.0f} s training)")
    # the shipped judge asked about this row's outputs (the supervised trainer has none of its own)
    judge = trainer.judge or build_judge(trainer.cfg.judge, trainer.device, seed)
    return {"variant": label, "seed": seed, "steps": steps, "train_seconds": round(train_s, 1),
            "settings": row_settings(variant, trainer.cfg), "metrics": metrics,
            "judge": agreement(judge, evals, outputs), "outputs": outputs}


def row_settings(variant: str, cfg) -> dict:
    """What a row trained with: its overrides of the recipe (editor.VARIANTS on top of editor.SETTINGS) and the
    resolved settings that tell the rows apart."""
    return {"overrides": VARIANTS[variant], "stage": cfg.train.stage, "lr": cfg.optim.lr, "fake_lr": cfg.optim.fake_lr,
            "w_vlm": cfg.loss.w_vlm, "w_dmd": cfg.loss.w_dmd, "fake_updates": cfg.loss.fake_updates,
            "identity_question": cfg.loss.identity_question, "lora": cfg.lora.enabled,
            "gradient_checkpointing": cfg.train.gradient_checkpointing, "batch_size": cfg.train.batch_size}


def parts(evals, n_captions: int = 100) -> dict:
    """The world's own models, measured where they bound an editor: the autoencoder's round trip of the
    evaluation scenes (an editor cannot keep more than it keeps), the teacher's text-to-image scene
    accuracy (oracle.scene_match), the judge's held-out accuracy (from its train_log.json) and whether the judge sees
    the scene (its own captions of held-out scenes, judge.caption_accuracy)."""
    from npedit_core.backbones.flux2_klein import Flux2KleinBackbone
    from npedit_core.judges.qwen2_5_vl import Qwen25VLJudge
    from npedit_core.microworld.editor import JUDGE_DIR, TEACHER_DIR
    from npedit_core.microworld.judge import caption_accuracy
    from npedit_core.microworld.teacher import scene_accuracy

    backbone = Flux2KleinBackbone.from_pretrained(str(TEACHER_DIR), dtype=torch.float32)
    images = render_batch([s for s, _ in evals] + [e.target for _, e in evals])
    with torch.no_grad():
        back = backbone.decode_latents(backbone.encode_images(images)).clamp(0, 1)
    return {
        "autoencoder": {"psnr": round(float(10 * torch.log10(1 / ((back - images) ** 2).mean())), 2),
                        "kept_pixels": round(float(((back - images).abs().amax(1) < 0.1).float().mean()), 4)},
        "teacher": scene_accuracy(backbone, n_captions),
        "judge": json.loads((JUDGE_DIR / "train_log.json").read_text())["held_out"],
        "judge_captions": caption_accuracy(Qwen25VLJudge.from_pretrained(str(JUDGE_DIR), dtype=torch.float32).eval()),
    }


def summarise(runs: list[dict]) -> dict:
    table: dict = {}
    for r in runs:
        table.setdefault(r["variant"], []).append(r)
    out = {}
    for variant, rs in table.items():
        row = {"seeds": [r["seed"] for r in rs], "train_seconds_mean": statistics.mean(r["train_seconds"] for r in rs)}
        for group in ["all", *EDIT_TYPES]:
            for key in ("success", "preservation", "scene"):
                vals = [r["metrics"][group][key] for r in rs if group in r["metrics"]]
                row[f"{group}/{key}"] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        out[variant] = row
    return out


def markdown(summary: dict, steps: int, n_eval: int, world: dict | None = None) -> str:
    head = ["row", "success", "preservation", "scene right"] + [f"{t} succ." for t in EDIT_TYPES]
    lines = []
    if world:
        ae, teacher, judge = world["autoencoder"], world["teacher"], world["judge"]
        lines += [f"World parts: autoencoder round trip {ae['psnr']} dB, {ae['kept_pixels']:.3f} of pixels within 0.1; "
                  f"teacher draws the caption's scene in {teacher['scene']:.2f} of {teacher['n']} held-out captions "
                  f"(background {teacher['background']:.2f}, shapes {teacher['shape']:.2f}); judge held-out accuracy "
                  f"{judge['accuracy']:.3f}, and its own captions of held-out scenes name a shape's colour and kind "
                  f"in {world['judge_captions']['colour_kind']:.2f} of shapes.", ""]
    lines += [f"Micro-world, {steps} editor steps from the shipped warm-up, oracle on {n_eval} balanced held-out "
              "edits; mean ± std over seeds.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, row in summary.items():
        cells = [f"{variant} (n={len(row['seeds'])})"]
        for key in ("all/success", "all/preservation", "all/scene", *[f"{t}/success" for t in EDIT_TYPES]):
            m, s = row[key]
            cells.append(f"{m:.3f} ± {s:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["warmup", *VARIANTS])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--eval-per-type", type=int, default=50)
    ap.add_argument("--work", default="runs/microworld-bench")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default; 1 with --jobs)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each")
    ap.add_argument("--warmup", default=str(WARMUP_FILE), help="the warm-up editor every row starts from")
    a = ap.parse_args(argv)
    warmup = Path(a.warmup).resolve()
    if not warmup.is_file():
        ap.error(f"--warmup: {a.warmup} is not a file")
    if a.threads:
        torch.set_num_threads(a.threads)
    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    items = examples(a.n_train)
    manifest = write_manifest(work / "data", items)
    evals = eval_items(a.eval_per_type)
    json_path = out / "microworld.json"
    world = parts(evals)
    print(f"world parts: {world}")
    jobs = [(v, seed, 0 if v == "warmup" else a.steps) for v in a.variants for seed in a.seeds]
    threads = a.threads or (1 if a.jobs > 1 else torch.get_num_threads())  # per run
    runs = []

    def record(result: dict) -> None:  # checkpoint the table after every run
        runs.append(result)
        runs.sort(key=lambda r: (a.variants.index(r["variant"]), r["seed"]))
        summary = summarise(runs)
        json_path.write_text(json.dumps({
            "steps": a.steps, "seeds": a.seeds, "eval_examples": len(evals), "n_train": a.n_train,
            "warmup_file": str(warmup.relative_to(ROOT) if warmup.is_relative_to(ROOT) else warmup.name),
            "torch_threads": threads, "jobs": a.jobs,
            "world": world, "summary": summary, "runs": [{k: v for k, v in x.items() if k != "outputs"} for x in runs]}, indent=2))
        (out / "microworld.md").write_text(markdown(summary, a.steps, len(evals), world))

    if a.jobs <= 1:
        for v, seed, steps in jobs:
            record(run(v, seed, steps, work, manifest, items, evals, warmup=warmup))
    else:  # one process per run (the models are tiny: one CPU thread each uses the cores best)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(a.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(run, v, seed, steps, work, manifest, items, evals, print, threads, True, warmup)
                       for v, seed, steps in jobs]
            failed = []
            for future in as_completed(futures):  # one failed run does not lose the others
                try:
                    record(future.result())
                except Exception as e:  # noqa: BLE001 - reported below, after the table is written
                    failed.append(e)
                    print(f"a run failed: {type(e).__name__}: {e}")
            if failed:
                raise failed[0]
    # grid: two examples per edit type; columns input, target, then each row's seed-0 output
    pick = [i for t in range(len(EDIT_TYPES)) for i in (t, t + len(EDIT_TYPES)) if i < len(evals)]
    first = {}
    for r in runs:
        first.setdefault(r["variant"], r["outputs"])
    inputs = render_batch([evals[i][0] for i in pick])
    targets = render_batch([evals[i][1].target for i in pick])
    cols = [[targets[k] for k in range(len(pick))]] + [[o[i] for i in pick] for o in first.values()]
    save_preview_grid(out / "microworld_grid.png", list(inputs), *cols)
    (out / "microworld_grid.txt").write_text(
        "columns: input | target (oracle's) | " + " | ".join(first) + "\nrows: "
        + "; ".join(evals[i][1].instruction for i in pick) + "\n")
    print(markdown(summarise(runs), a.steps, len(evals), world))


if __name__ == "__main__":
    main()
