"""Build the backbone and the judge that a config names: real local weights, or tiny random ones."""

from __future__ import annotations

import torch

from .backbones import Backbone, backbone_class
from .config import JudgeConfig, ModelConfig
from .judges import Judge, judge_class

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_backbone(cfg: ModelConfig, device: torch.device | str = "cpu") -> Backbone:
    """`cfg.path` set: load real weights from that local folder; unset: tiny random components (fp32)."""
    cls = backbone_class(cfg.backbone)
    if cfg.path is None:
        backbone = cls.tiny(seed=cfg.tiny_seed).to(device)
    else:
        backbone = cls.from_pretrained(cfg.path, dtype=DTYPES[cfg.dtype], device=device)
    backbone.freeze_frozen_parts()
    return backbone


def build_judge(cfg: JudgeConfig, device: torch.device | str = "cpu", seed: int = 0) -> Judge:
    """`cfg.path` set: load the real VLM from that local folder; unset: a tiny random judge (fp32)."""
    cls = judge_class(cfg.family)
    if cfg.path is None:
        judge = cls.tiny(seed=seed).to(device)
    else:
        judge = cls.from_pretrained(cfg.path, dtype=DTYPES[cfg.dtype], device=device)
    judge.set_answer_words(cfg.yes_token, cfg.no_token)
    return judge
