"""The small protocol every VLM judge implements.

A judge is a frozen vision-language model asked yes/no questions about one or two images. Its whole
path, from (B, 3, H, W) images in [0, 1] to the logits of the answer token, is differentiable, so the
NP-Edit loss can send gradients back into the editor (method.md section 2.2).

Each family file provides:
- a module-level `preprocess(images)` that turns a float (B, 3, H, W) tensor in [0, 1] into the
  tensors the model's forward takes, in torch, matching the model's own HF image processor;
- a `Judge` subclass whose `build_inputs` lays out a batch of chat prompts (one or two images each),
  left-padded so that the answer position is the last one of every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import NPEditError


@dataclass
class Question:
    """One yes/no question: the user text, the images shown before it, and the answer we want.

    images: list of (3, H, W) float tensors in [0, 1] (one or two, in the order they are shown).
    desired: "Yes" or "No". kind: "edit" (was the instruction carried out?) or "identity"
    (is everything else unchanged?); used for logging P(Yes) per question type.
    """

    text: str
    images: list[torch.Tensor]
    desired: str = "Yes"
    kind: str = "edit"


class Judge(nn.Module):
    """A frozen VLM read at the answer position for the two tokens "Yes" and "No"."""

    family: ClassVar[str]

    def __init__(self, model: nn.Module, tokenizer, yes_token: str = "Yes", no_token: str = "No"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.yes_id = single_token_id(tokenizer, yes_token)
        self.no_id = single_token_id(tokenizer, no_token)
        self.model.requires_grad_(False)
        self.model.eval()  # frozen; train() only for gradient checkpointing (set_gradient_checkpointing)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, *, dtype: torch.dtype = torch.bfloat16, device="cpu", **kwargs) -> "Judge":
        """Load a real VLM and its tokenizer from a local folder; never downloads."""
        raise NotImplementedError

    @classmethod
    def tiny(cls, seed: int = 0, tokenizer_path: str | None = None) -> "Judge":
        """A random-initialised model of the real class at a tiny size, with the real Qwen tokenizer."""
        raise NotImplementedError

    # --- the protocol -------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> the vision tensors the model's forward takes (differentiable)."""
        raise NotImplementedError

    def build_inputs(self, questions: list[Question]) -> dict[str, torch.Tensor]:
        """Chat-formatted, tokenised, left-padded forward kwargs for a batch of questions.

        Every row ends with the assistant turn's opening, so logits[:, -1] predict the answer.
        """
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the VLM's layers in the editor's backward instead of keeping their activations.

        HF models checkpoint only in train() mode, and there every dropout of the real configs would
        act (attention dropout, InternViT's hidden and projection dropout): the judge would answer
        randomly and the backward's recomputation would differ from its forward. So every dropout is
        zeroed first (`disable_dropout`); the judge computes the same function in both modes.
        """
        model = self.model
        if enabled:
            disable_dropout(model)
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
            model.train()
        else:
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()
            model.eval()

    def set_answer_words(self, yes: str = "Yes", no: str = "No") -> None:
        """Read other answer tokens (each must be a single token of the judge's tokenizer)."""
        self.yes_id, self.no_id = single_token_id(self.tokenizer, yes), single_token_id(self.tokenizer, no)

    def answer_logits(self, questions: list[Question]) -> torch.Tensor:
        """(Q, 2) float32 logits of ["Yes", "No"] at the answer position; differentiable in the images."""
        if not questions:
            raise NPEditError("judge: no questions to ask")
        inputs = self.build_inputs(questions)
        # logits_to_keep=1: only the last position's logits are computed (saves a (Q, L, vocab) tensor).
        out = self.model(**inputs, logits_to_keep=1, use_cache=False)
        last = out.logits[:, -1]
        return last[:, [self.yes_id, self.no_id]].float()

    @torch.no_grad()
    def p_yes(self, questions: list[Question]) -> torch.Tensor:
        """(Q,) probability of "Yes" against "No" (two-token softmax), without gradients."""
        logits = self.answer_logits(questions)
        return torch.sigmoid(logits[:, 0] - logits[:, 1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


#: Float attributes that HF attention / layer modules read as dropout rates when `self.training` is set.
DROPOUT_RATES = ("attention_dropout", "dropout", "dropout_rate", "hidden_dropout", "hidden_dropout_prob",
                 "projection_dropout", "drop_path_rate", "drop_prob")


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout and drop-path of `model`, so train() mode computes what eval() does.

    Covers nn.Dropout modules (p = 0), drop-path modules (drop_prob = 0) and the float rates that
    attention code applies functionally (`dropout=0.0 if not self.training else self.attention_dropout`);
    the configs' own rates are zeroed too, so modules built later from them agree.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name in DROPOUT_RATES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        for sub in [config] + [getattr(config, k, None) for k in ("text_config", "vision_config")]:
            for name in DROPOUT_RATES:
                if isinstance(getattr(sub, name, None), float):
                    setattr(sub, name, 0.0)


def single_token_id(tokenizer, text: str) -> int:
    """The id of `text` if the tokenizer encodes it as exactly one token, else a clear error."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise NPEditError(f"judge tokenizer: answer word {text!r} is {len(ids)} tokens {ids}, expected exactly one")
    return ids[0]
