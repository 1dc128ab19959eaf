"""The NP-Edit trainer: the warm-up (reference copy) and NP-Edit stages, resumable, one GPU to many.

Reads top to bottom: build models, data and optimisers; resume from RUN/checkpoints/latest; loop
`step()`; save atomically every `save_every` steps and on Ctrl-C. Loss terms live in losses.py and
objective.py; this file only weights, sums, clips and steps (method.md sections 2-3).

Several processes (`accelerate launch`): each rank takes its slice of every global batch; gradients
are averaged across ranks by hand after backward, because the shared-base LoRA layout switches
adapters inside one module, which DDP's fixed parameter list cannot follow. The unroll length k is a
function of (seed, step), so every rank unrolls the same number of steps without communicating.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from collections import OrderedDict, deque
from pathlib import Path

import torch

from .backbones.base import TextEmbeds
from .checkpoint import (checkpoint_dir, latest_checkpoint, load_checkpoint, resumable, rng_state, save_checkpoint,
                         set_rng_state, step_files)
from .config import NPEditConfig, OptimConfig, check_ranges, save_config, to_dict
from .data import BucketBatchSampler, assign_bucket, collate, demo_manifest, make_buckets, read_manifest
from .errors import DataError, NPEditError
from .losses import batch_share, cfg_scales, dmd_generator_loss, do_nothing_loss, fake_score_loss, logit_scale, warmup_loss
from .models import build_backbone, build_judge
from .objective import judge_loss
from .previews import save_preview_grid
from .roles import make_roles
from .run_dir import RunLock, check_writable, config_changes, cut_metrics
from .sampler import edit_images, edit_schedule, unroll

DO_NOTHING = "do nothing."


def learning_rate(step: int, optim: OptimConfig, total_steps: int) -> float:
    """The fraction of optim.lr (and fake_lr) for the update that follows `step` editor updates.

    The re-implementation's LinearWarmupCosineDecayScheduler (utils/lr.py): linear from 1e-8 to 1 over
    `warmup_steps`, then constant, or ("cosine") a half cosine down to min_lr / lr at `total_steps`,
    then min_lr. A function of the step alone, so resume needs no scheduler state.
    """
    if step < optim.warmup_steps:
        return 1e-8 + (1 - 1e-8) * step / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    floor = optim.min_lr / optim.lr
    span = total_steps - optim.warmup_steps
    if span <= 0 or step >= total_steps:
        return floor
    return floor + (1 - floor) * (1 + math.cos(math.pi * (step - optim.warmup_steps) / span)) / 2


def param_groups(params: list, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (ndim > 1) only, none on biases, norms and embeddings' scales."""
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}) if g["params"]]


class TextCache:
    """Prompt -> embeddings, computed once and kept on the CPU (bounded LRU)."""

    def __init__(self, backbone, size: int = 4096, offload: bool = False):
        self.backbone, self.size, self.items, self.offload = backbone, size, OrderedDict(), offload
        if offload:
            backbone.text_encoder.to("cpu")

    @torch.no_grad()
    def __call__(self, prompts: list[str], device) -> TextEmbeds:
        missing = list(dict.fromkeys(p for p in prompts if p not in self.items))
        if missing:
            if self.offload:  # on the device only while encoding what the cache lacks
                self.backbone.text_encoder.to(device)
            encoded = self.backbone.encode_text(missing).to("cpu")
            if self.offload:
                self.backbone.text_encoder.to("cpu")
            for i, prompt in enumerate(missing):
                self.items[prompt] = encoded.index([i])
        for prompt in prompts:
            self.items.move_to_end(prompt)
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return TextEmbeds.cat([self.items[p] for p in prompts]).to(device)


class Trainer:
    def __init__(self, cfg: NPEditConfig, accelerator=None, log=print):
        from accelerate import Accelerator

        self.cfg, self.log = cfg, log
        # cpu=True on machines without CUDA: only then does accelerate form a multi-process (gloo) group
        # under torchrun/accelerate launch; otherwise every rank would silently train alone.
        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.device = self.acc.device
        self.run_dir = Path(cfg.train.run_dir)
        self.is_main = self.acc.is_main_process
        check_ranges(cfg)  # configs built in code too, before anything is built
        self.lock = RunLock(self.run_dir)
        self._claim_run_dir()
        # Models (incl. LoRA's random init) are built under the SAME seed on every rank, so the replicas
        # start identical; the per-rank noise streams are seeded after construction.
        torch.manual_seed(cfg.train.seed)

        self.backbone = build_backbone(cfg.model, self.device)
        self.roles = make_roles(self.backbone, cfg.lora.enabled, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
        # Through the roles, never the transformer's own switch: a recomputed block must run the LoRA
        # adapter of its forward (checkpointing.py), and full fine-tunes checkpoint all three copies.
        self.roles.set_gradient_checkpointing(cfg.train.gradient_checkpointing)
        self.fsdp = cfg.train.fsdp and self.acc.num_processes > 1
        if cfg.train.fsdp and cfg.lora.enabled:
            raise NPEditError("train.fsdp=true shards full fine-tunes: set lora.enabled=false (LoRA runs use plain data parallelism)")
        if self.fsdp:
            self.roles.shard()  # before the optimisers, which must see the sharded parameters
        self.npedit = cfg.train.stage == "npedit"
        self.judge = build_judge(cfg.judge, self.device, cfg.train.seed) if self.npedit else None
        if self.judge is not None and cfg.train.gradient_checkpointing:
            self.judge.set_gradient_checkpointing(True)  # train() mode with every dropout zeroed
        self.text = TextCache(self.backbone, offload=cfg.train.offload_text_encoder)
        if self.judge is not None and cfg.train.offload_judge:
            self.judge.to("cpu")
        self.schedule = edit_schedule(cfg.sampler.steps, cfg.sampler.shift)

        o = cfg.optim
        self.editor_params = self.roles.editor_parameters()
        self.fake_params = self.roles.fake_parameters()
        self.opt = torch.optim.AdamW(param_groups(self.editor_params, o.weight_decay), lr=o.lr, betas=o.betas)
        self.fake_opt = torch.optim.AdamW(param_groups(self.fake_params, o.weight_decay), lr=o.fake_lr, betas=o.betas)

        self.records = self._read_data()
        self.buckets = make_buckets(cfg.data.resolution, self.backbone.pixel_multiple)
        global_batch = cfg.train.batch_size * self.acc.num_processes
        self.sampler = BucketBatchSampler(
            self.records, self.buckets, global_batch, cfg.train.seed, self.acc.process_index, self.acc.num_processes
        )
        torch.manual_seed(cfg.train.seed + 7919 * self.acc.process_index)
        random.seed(cfg.train.seed + 7919 * self.acc.process_index)
        self.step = 0
        self._stop = self.interrupted = False
        self._batches: deque = deque()  # this step's batches, loaded before any update (`_prefetch`)
        self.skipped_in_a_row = 0
        self.saved_step: int | None = None
        if cfg.train.init_from:
            self._init_from(cfg.train.init_from)
        self._resume()

    # --- data ---------------------------------------------------------------------------------
    def _read_data(self):
        d = self.cfg.data
        if d.manifest is None:
            manifest = demo_manifest(self.run_dir / "demo_data")
            return read_manifest(manifest, require_source_caption=not self.npedit)
        return read_manifest(d.manifest, d.image_root, require_source_caption=not self.npedit)

    def next_batch(self) -> dict:
        """The next batch: from this step's prefetched ones, else read now."""
        return self._batches.popleft() if self._batches else self._read_batch()

    def _read_batch(self) -> dict:
        return collate(self.records, self.sampler.next_batch(), self.buckets)

    def _prefetch(self) -> None:
        """Read every batch this step uses before any update, on every rank.

        So an unreadable image (a truncated JPEG) stops the run between steps, with the weights, data
        position and random streams of the last finished step, which `run` then saves: nothing is lost.
        """
        per_update = self.cfg.train.grad_accum
        count = per_update * (1 + (self.cfg.loss.fake_updates if self.npedit else 0))
        position = self.sampler.state_dict()
        error = None
        try:
            self._batches = deque(self._read_batch() for _ in range(count))
        except NPEditError as exc:
            error = exc
        if not self._all_agree(error is None):
            self._batches = deque()
            self.sampler.load_state_dict(position)
            raise DataError(str(error) if error else "another process could not read its batch (see its message)")

    # --- one update ---------------------------------------------------------------------------
    def unroll_k(self) -> int:
        """k ~ U{1..steps}, the same on every rank: drawn from (seed, step), not from a shared RNG."""
        return random.Random(self.cfg.train.seed * 1_000_003 + self.step).randint(1, self.cfg.sampler.steps)

    def editor_losses(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg, dev = self.cfg, self.device
        images = batch["images"].to(dev)
        with torch.no_grad():
            reference = self.backbone.encode_images(images)
        # With FSDP every rank must run the same forward passes, so the draws (text dropout, do nothing)
        # come from (seed, step) like k; otherwise from this rank's own stream.
        draw = random.Random(cfg.train.seed * 1_000_033 + self.step) if self.fsdp else random
        if not self.npedit:
            text = self.text(self._drop_text(batch["source_captions"], draw), dev)
            loss, logs = warmup_loss(self.roles.editor, reference, text, cfg.sampler.shift, times=cfg.loss.warmup_times,
                                     t2i_share=cfg.loss.warmup_t2i_share)
            return loss, logs

        b = images.shape[0]
        idle = [draw.random() < cfg.loss.do_nothing_prob for _ in range(b)]
        instructions = [DO_NOTHING if n else s for n, s in zip(idle, self._drop_text(batch["instructions"], draw))]
        k = self.unroll_k()
        noise = torch.randn(reference.shape, device=dev, dtype=reference.dtype)
        x0 = unroll(self.roles.editor_backbone(), noise, self.text(instructions, dev), reference, self.schedule, k, cfg.sampler.eta)
        logs = {"unroll_k": k}
        total = x0.new_zeros((), dtype=torch.float32)
        edit_rows = [i for i in range(b) if not idle[i]]
        if edit_rows:
            pick = lambda seq: [seq[i] for i in edit_rows]  # noqa: E731
            x0_e = x0[edit_rows]
            edited = self.backbone.decode_latents(x0_e)
            scale = logit_scale(self.step, cfg.loss.logit_scale_start, cfg.loss.logit_scale_end, cfg.loss.logit_scale_ramp_steps)
            l_vlm, vlm_logs = judge_loss(
                self.judge, images[edit_rows], edited.to(images.dtype), pick(batch["instructions"]), pick(batch["edit_types"]),
                pick(batch["objects"]), cfg.judge.questions, scale, cfg.loss.identity_question,
            )
            captions = self.text(pick(batch["edited_captions"]), dev)
            negative = self.text([cfg.loss.negative_prompt] * len(edit_rows), dev)
            l_dmd, dmd_logs = dmd_generator_loss(
                x0_e, self.roles.teacher, self.roles.fake, captions, negative, cfg_scales(pick(batch["edit_types"]), dev),
                cfg.loss.dmd_t_min, cfg.loss.dmd_t_max,
            )
            share = batch_share(len(edit_rows), b)  # every sample weighs 1 / b, whichever term it feeds
            total = total + share * (cfg.loss.w_vlm * l_vlm + cfg.loss.w_dmd * l_dmd)
            logs.update(vlm_logs, **dmd_logs, logit_scale=scale)
        idle_rows = [i for i in range(b) if idle[i]]
        if idle_rows:
            l_dn, dn_logs = do_nothing_loss(x0[idle_rows], reference[idle_rows])
            total = total + batch_share(len(idle_rows), b) * cfg.loss.w_do_nothing * l_dn
            logs.update(dn_logs)
        return total, logs

    def _drop_text(self, prompts: list[str], draw) -> list[str]:
        """Each prompt becomes "" with probability train.text_dropout (one draw per prompt, always taken)."""
        p = self.cfg.train.text_dropout
        return [("" if draw.random() < p else s) for s in prompts] if p > 0 else list(prompts)

    def fake_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Fake-score denoising loss on a fresh batch of editor outputs made without gradients."""
        dev = self.device
        images = batch["images"].to(dev)
        with torch.no_grad():
            reference = self.backbone.encode_images(images)
            noise = torch.randn(reference.shape, device=dev, dtype=reference.dtype)
            text = self.text(list(batch["instructions"]), dev)
            x0 = unroll(self.roles.editor_backbone(), noise, text, reference, self.schedule, self.unroll_k(), self.cfg.sampler.eta)
        return fake_score_loss(self.roles.fake, x0, self.text(list(batch["edited_captions"]), dev))

    def update(self, opt, params, loss_fn, prefix: str) -> dict:
        """grad_accum micro-batches -> average across ranks -> clip -> step.

        Skipped, on every rank alike: a non-finite loss (on any rank) or gradient norm, and a gradient
        norm (before clipping) above optim.grad_spike_threshold from grad_spike_start_step on.
        """
        o, accum = self.cfg.optim, self.cfg.train.grad_accum
        logs: dict = {}
        finite = True
        for _ in range(accum):
            loss, micro = loss_fn(self.next_batch())
            # TRAP: no early exit on a non-finite loss. Every rank must run the same micro-batches and
            # backward passes (FSDP's are collectives) and reach the agreement below, or the others
            # wait for this rank forever; the NaN gradients are thrown away with the step.
            finite = finite and bool(torch.isfinite(loss))
            if loss.requires_grad:
                (loss / accum).backward()
            for key, value in micro.items():
                logs[key] = logs.get(key, 0.0) + value / accum
        finite = self._all_agree(finite)
        reason = None if finite else "non-finite loss"
        if finite:
            self._all_reduce(params)
            if self.fsdp:
                from .fsdp import clip_grad_norm

                norm = clip_grad_norm(params, o.grad_clip)
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
            norm = norm.item()  # the same on every rank: gradients are averaged (or FSDP-reduced) first
            logs[f"{prefix}grad_norm"] = norm
            if not math.isfinite(norm):
                reason = "non-finite gradient"
            elif o.grad_spike_threshold is not None and self.step >= o.grad_spike_start_step and norm > o.grad_spike_threshold:
                reason = f"gradient norm {norm:.4g} above optim.grad_spike_threshold={o.grad_spike_threshold:g}"
                logs[f"{prefix}spike"] = 1
        if reason is None:
            opt.step()
            if not self._all_agree(_all_finite(params)):
                raise NPEditError(
                    f"step {self.step + 1}: the {prefix or 'editor '}update made weights non-finite (optim.lr "
                    f"{self.cfg.optim.lr:g} too high, or float16 overflow?); stopped without saving it. {self._last_saved()}")
        else:
            logs[f"{prefix}skipped"] = 1
            self.log(f"step {self.step + 1}: {reason} ({prefix or 'editor '}update), update skipped")
        opt.zero_grad(set_to_none=True)
        return logs

    def _last_saved(self, suspect: bool = False) -> str:
        """Which checkpoint a resume would use; with `suspect`, whether the update that preceded a run of
        skipped ones (the likely cause: finite weights that make every loss NaN) was saved, and the one before."""
        if not self.is_main:
            return ""
        steps = step_files(checkpoint_dir(self.run_dir))
        if not steps:
            return "No checkpoint was saved yet."
        last = max(steps)
        text = f"The last checkpoint is {steps[last]}."
        if suspect and last == self.step - self.skipped_in_a_row:
            earlier = [s for s in steps if s < last]
            text += (f" It was saved by the update right before the skipped ones, which may have caused them"
                     + (f"; the one before is {steps[max(earlier)]}." if earlier else "."))
        return text

    def _claim_run_dir(self) -> None:
        """Before any model is built: the run directory is writable and no other process trains in it."""
        message = ""
        if self.is_main:
            try:
                check_writable(self.run_dir)
                self.lock.acquire()
            except NPEditError as exc:
                message = str(exc)
        if not self._all_agree(not message):
            raise NPEditError(message or f"train.run_dir {self.run_dir}: refused by the main process (see its message)")

    def _all_agree(self, ok: bool) -> bool:
        """True only if `ok` on every rank (one all-reduce)."""
        if self.acc.num_processes == 1:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
        return bool(self.acc.reduce(flag, reduction="sum").item() == self.acc.num_processes)

    def _set_learning_rates(self) -> float:
        factor = learning_rate(self.step, self.cfg.optim, self.cfg.train.steps)
        for opt, base in ((self.opt, self.cfg.optim.lr), (self.fake_opt, self.cfg.optim.fake_lr)):
            for group in opt.param_groups:
                group["lr"] = base * factor
        return factor * self.cfg.optim.lr

    def _all_reduce(self, params) -> None:
        if self.acc.num_processes == 1:
            return
        if self.fsdp:  # FSDP reduce-scatters the sharded blocks' gradients itself
            from .fsdp import is_sharded

            params = [p for p in params if not is_sharded(p)]
        for p in params:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = self.acc.reduce(grad, reduction="mean")

    def train_step(self) -> dict:
        started = time.perf_counter()
        self._prefetch()
        logs: dict = {"lr": self._set_learning_rates()}
        if self.npedit:
            n = self.cfg.loss.fake_updates
            for _ in range(n):
                for key, value in self.update(self.fake_opt, self.fake_params, self.fake_loss, "fake_").items():
                    logs[key] = logs.get(key, 0.0) + value / n  # averaged over the fake updates
        offload = self.judge is not None and self.cfg.train.offload_judge
        if offload:
            self.judge.to(self.device)
        logs.update(self.update(self.opt, self.editor_params, self.editor_losses, ""))
        if offload:
            self.judge.to("cpu")
        self.step += 1
        logs["step"] = self.step
        logs["step_time"] = time.perf_counter() - started
        if torch.cuda.is_available():
            logs["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return logs

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> Path:
        """Train to train.steps; `self.interrupted` tells whether Ctrl-C stopped it (after saving)."""
        t = self.cfg.train
        if self.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
        writer = self._tensorboard() if self.is_main and t.tensorboard else None
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        save_due = False
        try:
            from tqdm import tqdm

            bar = tqdm(total=t.steps, initial=self.step, disable=not self.is_main, desc=t.stage, dynamic_ncols=True)
            while self.step < t.steps and not self._stop:
                try:
                    logs = self.train_step()
                except DataError as exc:  # nothing of this step was applied: the last finished step is saved
                    self._save_if_new()
                    raise NPEditError(f"{exc}. Saved step {self.step}; fix or remove that row, then run the same "
                                      "command to resume") from None
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k.endswith("loss")}, refresh=False)
                if self.is_main and (self.step % t.log_every == 0 or self.step == t.steps):
                    with open(self.run_dir / "metrics.jsonl", "a") as handle:
                        handle.write(json.dumps(logs) + "\n")
                    if writer is not None:
                        for key, value in logs.items():
                            writer.add_scalar(key, value, self.step)
                self.skipped_in_a_row = self.skipped_in_a_row + 1 if logs.get("skipped") else 0
                if self.skipped_in_a_row >= t.max_skipped_steps:
                    raise NPEditError(f"step {self.step}: the last {self.skipped_in_a_row} editor updates were all skipped "
                                      f"(train.max_skipped_steps); stopped without saving. {self._last_saved(suspect=True)}")
                # A save waits out a run of skipped updates: weights that only produce NaN are never saved.
                save_due = save_due or self.step % t.save_every == 0 or self.step == t.steps
                if save_due and self.skipped_in_a_row == 0:
                    self.save()
                    save_due = False
                if t.preview_every and self.step % t.preview_every == 0 and (self.is_main or self.fsdp):
                    self.preview()  # with FSDP every rank runs the sampler (its forwards are collectives)
            bar.close()
            if self._stop:
                self.interrupted = True
                self._save_if_new()
                self.log(f"interrupted: saved step {self.step} to {self.run_dir / 'checkpoints'}; run again to resume")
            elif save_due:
                self.log(f"step {self.step}: not saved, the last updates were skipped. {self._last_saved()}")
        finally:
            signal.signal(signal.SIGINT, previous)
            if writer is not None:
                writer.close()
            self.lock.release()
        return self.run_dir

    def _save_if_new(self) -> None:
        if self.saved_step != self.step and self.skipped_in_a_row == 0:
            self.save()

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise NPEditError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _on_interrupt(self, signum, frame):
        # First Ctrl-C: finish the step in flight, save, stop. A second one stops at once.
        self._stop = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.log("\nCtrl-C: finishing this step and saving (press again to abort without saving)")

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "stage": self.cfg.train.stage,
            "editor": self.roles.editor_state_dict(),
            "fake": self.roles.fake_state_dict(),
            "opt": self._opt_state(self.roles.editor_transformer, self.opt) if self.fsdp else self.opt.state_dict(),
            "fake_opt": self._opt_state(self.roles.fake_transformer, self.fake_opt) if self.fsdp else self.fake_opt.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "config": to_dict(self.cfg),
        }

    @staticmethod
    def _opt_state(module, opt) -> dict:
        from .fsdp import full_optimizer_state

        return full_optimizer_state(module, opt)

    def save(self) -> None:
        # With FSDP, gathering the full state is a collective: every rank builds it, rank 0 writes it.
        state = self.state_dict() if (self.is_main or self.fsdp) else None
        if self.is_main:
            save_checkpoint(self.run_dir, self.step, state, self.cfg.train.keep_checkpoints)
        self.acc.wait_for_everyone()
        self.saved_step = self.step

    def _resume(self) -> None:
        found = resumable(self.run_dir, self.log)
        if found is None:
            return
        path, state = found
        if state["stage"] != self.cfg.train.stage:
            raise NPEditError(
                f"{path} is a '{state['stage']}' checkpoint but train.stage is '{self.cfg.train.stage}'; "
                "use a new train.run_dir and train.init_from to start a new stage from it"
            )
        breaking, harmless = config_changes(state.get("config", {}), to_dict(self.cfg))
        if breaking and not self.cfg.train.allow_config_change:
            raise NPEditError(f"resume from {path}: {'; '.join(breaking)} (the checkpoint's config -> this one). These "
                              "change what the run computes, so it would not resume exactly: use the old values, "
                              "or pass --allow-config-change (train.allow_config_change=true)")
        for line in breaking + harmless:
            self.log(f"resume: {line} (changed)")
        self.roles.load_state(state["editor"], state["fake"])
        if self.fsdp:
            from .fsdp import load_optimizer_state

            load_optimizer_state(self.roles.editor_transformer, self.opt, state["opt"])
            load_optimizer_state(self.roles.fake_transformer, self.fake_opt, state["fake_opt"])
        else:
            self.opt.load_state_dict(state["opt"])
            self.fake_opt.load_state_dict(state["fake_opt"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = self.saved_step = state["step"]
        if self.is_main:
            dropped = cut_metrics(self.run_dir / "metrics.jsonl", self.step)
            if dropped:
                self.log(f"metrics.jsonl: dropped {dropped} rows after step {self.step} (those steps are redone now)")
        if self.acc.num_processes == 1:
            set_rng_state(state["rng"])
        else:  # other ranks' streams were not saved: re-derive them from (seed, rank, step)
            torch.manual_seed(self.cfg.train.seed + 7919 * self.step + self.acc.process_index)
        self.log(f"resumed from {path} at step {self.step}")

    def _init_from(self, path: str) -> None:
        """Start from the editor (and fake score) of another run's checkpoint, e.g. the warm-up's."""
        source = Path(path)
        ckpt = latest_checkpoint(source) if source.is_dir() else source
        if ckpt is None:
            raise NPEditError(f"train.init_from: no checkpoint in {source}")
        state = load_checkpoint(ckpt)
        self.roles.load_state(state["editor"], state["fake"])
        self.log(f"initialised the editor from {ckpt}")

    def preview(self, count: int = 4) -> Path:
        """Edit a fixed set of training images with fixed seeds; save a before/after grid."""
        s = self.cfg.sampler
        inputs, outputs = [], []
        for i, record in enumerate(self.records[:count]):
            image = collate(self.records, [i], self.buckets)["images"]  # one at a time: buckets differ
            inputs.append(image)
            outputs.append(edit_images(self.roles.editor_backbone(), image, record.instruction, seeds=i,
                                       steps=s.steps, shift=s.shift, eta=s.eta, step=s.step))
        path = self.run_dir / "previews" / f"step-{self.step:08d}.png"
        if self.is_main:
            save_preview_grid(path, inputs, outputs)
        return path


def _all_finite(params) -> bool:
    """Every parameter finite (one host sync; sharded parameters checked on this rank's shard)."""
    checks = [torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in params]
    return bool(torch.stack(checks).all()) if checks else True


def run_training(cfg: NPEditConfig, log=print) -> Trainer:
    """Build the trainer and run it; returns it (`.interrupted`: stopped by Ctrl-C after saving)."""
    trainer = Trainer(cfg, log=log)
    trainer.run()
    return trainer
