"""Step time and peak memory of one NP-Edit training step (Trainer.train_step), in fresh processes.

Part A, every backbone x judge pair on tiny random models: what one full step costs (fake-score update
+ editor update: unroll, decode, judge, DMD, backward).
Part B, the one-GPU memory design: ONE frozen base shared by editor / fake / teacher through LoRA
adapters, against three separate copies (editor and fake each a copy with its own LoRA adapter,
plus a frozen teacher copy), at equal settings; on the tiny transformer and a ~20M-parameter one.

Each configuration runs in its own process. Peak memory: on a GPU torch.cuda.max_memory_allocated;
on a CPU the process's peak RSS above the RSS after imports, i.e. weights + optimiser state +
activations. Step time: median over the steps after the first. Prints markdown, writes JSON.

    python benchmarks/train_step.py                  # CPU: part A and part B
    python benchmarks/train_step.py --part B --device cuda --steps 5
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npedit_core.roles import SeparateRoles, with_transformer  # noqa: E402

PAIRS = [(b, j) for b in ("flux2_klein", "z_image") for j in ("qwen2_5_vl", "qwen3_vl", "internvl")]
#: Transformer sizes for part B (overrides of the tiny FLUX.2-klein transformer config).
SIZES = {
    "tiny": {},
    "20M": {"num_layers": 3, "num_single_layers": 4, "num_attention_heads": 6, "attention_head_dim": 64,
            "axes_dims_rope": (16, 16, 16, 16)},
}


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


class ThreeCopies(SeparateRoles):
    """Baseline layout: separate editor / fake / teacher transformers; editor and fake carry LoRA."""

    def __init__(self, backbone, rank, alpha, dropout):
        from peft import LoraConfig

        self.backbone, self.sharded = backbone, False
        self.editor_transformer = backbone.transformer.requires_grad_(False)
        self.teacher_transformer = copy.deepcopy(self.editor_transformer)
        self.fake_transformer = copy.deepcopy(self.editor_transformer)
        targets = backbone.lora_target_modules()  # before any wrapping: peft replaces the Linears
        for module in (self.editor_transformer, self.fake_transformer):
            module.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets))
        self._fake = with_transformer(backbone, self.fake_transformer)
        self._teacher = with_transformer(backbone, self.teacher_transformer)

    def editor_parameters(self):
        return [p for p in self.editor_transformer.parameters() if p.requires_grad]

    def fake_parameters(self):
        return [p for p in self.fake_transformer.parameters() if p.requires_grad]


def worker(spec: dict) -> dict:
    """One configuration in this (fresh) process."""
    import npedit_core.trainer as trainer_module
    from npedit_core.backbones import backbone_class
    from npedit_core.config import load_config

    device = torch.device(spec["device"])
    base_rss = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    overrides = SIZES[spec.get("size", "tiny")]
    if overrides or spec["layout"] == "copies":
        original_tiny = backbone_class(spec["backbone"]).tiny.__func__

        def tiny(cls, seed=0, tokenizer_path=None):
            bb = original_tiny(cls, seed, tokenizer_path)
            if overrides:
                torch.manual_seed(seed)
                bb.transformer = type(bb.transformer).from_config({**bb.transformer.config, **overrides})
            return bb

        backbone_class(spec["backbone"]).tiny = classmethod(tiny)
    if spec["layout"] == "copies":
        trainer_module.make_roles = lambda bb, lora, rank, alpha, dropout: ThreeCopies(bb, rank, alpha, dropout)
    run_dir = tempfile.mkdtemp(prefix="npedit-bench-")  # never recorded: results hold no machine paths
    cfg = load_config(None, [
        f"model.backbone={spec['backbone']}", f"judge.family={spec['judge']}", "model.dtype=float32",
        "judge.dtype=float32", f"data.resolution={spec['resolution']}", "train.batch_size=1",
        f"train.run_dir={run_dir}", "train.save_every=1000000", "train.preview_every=0",
        "loss.fake_updates=1", "lora.rank=8", "lora.alpha=8", "loss.do_nothing_prob=0",
        f"train.gradient_checkpointing={str(spec['checkpointing']).lower()}",
    ])
    trainer = trainer_module.Trainer(cfg, accelerator=None, log=lambda *_: None)
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux: the process's high-water mark
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    shutil.rmtree(run_dir, ignore_errors=True)
    transformer_params = sum(p.numel() for n, p in trainer.backbone.transformer.named_parameters() if "lora_" not in n)
    return {**spec, "step_s": statistics.median(times[1:]) if len(times) > 1 else times[0], "first_step_s": times[0],
            "peak_mib": peak, "transformer_m": transformer_params / 1e6}


def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["A", "B", "AB"], default="AB")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration (the first is a warm-up)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from benchmarks.measure import machine, write_json

    common = {"device": args.device, "steps": args.steps, "resolution": args.resolution}  # run dirs: a fresh temp dir each
    results: dict = {"machine": machine(), "settings": common}
    lines = []
    if "A" in args.part:
        rows = [run({**common, "backbone": b, "judge": j, "layout": "shared", "checkpointing": False}) for b, j in PAIRS]
        results["pairs"] = rows
        lines += [f"### One NP-Edit step per backbone x judge (tiny random models, {args.resolution}px, batch 1, "
                  f"1 fake update, {args.device})", "", "| backbone | judge | step s | first step s | peak MiB |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['backbone']} | {r['judge']} | {r['step_s']:.3f} | {r['first_step_s']:.3f} | {r['peak_mib']:.0f} |"
                  for r in rows]
    if "B" in args.part:
        rows = []
        for size in SIZES:
            for layout in ("shared", "copies"):
                rows.append(run({**common, "backbone": "flux2_klein", "judge": "qwen2_5_vl", "layout": layout,
                                 "size": size, "checkpointing": False}))
        results["layouts"] = rows
        lines += ["", f"### Shared-base LoRA vs three copies (FLUX.2-klein + Qwen2.5-VL, {args.device})", "",
                  "| transformer | layout | transformer params M | step s | peak MiB | peak ratio shared/copies |",
                  "|---|---|---|---|---|---|"]
        for size in SIZES:
            shared, copies = (next(r for r in rows if r["size"] == size and r["layout"] == lay) for lay in ("shared", "copies"))
            for r in (shared, copies):
                ratio = f"{shared['peak_mib'] / copies['peak_mib']:.2f}" if r is shared else ""
                lines.append(f"| {size} | {r['layout']} | {r['transformer_m']:.1f} | {r['step_s']:.3f} | {r['peak_mib']:.0f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    write_json(f"{args.out}.json", results)
    Path(f"{args.out}.md").write_text(table + "\n")
    print(f"wrote {args.out}.json and {args.out}.md")


if __name__ == "__main__":
    main()
