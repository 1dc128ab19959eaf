"""A word-level tokenizer for the micro-world, trained with the `tokenizers` library.

One tokenizer serves the teacher's text encoder and the judge: its vocabulary is every word of the
world's captions and instructions, of the judge's question templates (`judges.prompts`), of the
trainer's fixed prompts ("do nothing.", the DMD negative prompt), plus the Qwen chat/vision special
tokens that `Flux2KleinBackbone.encode_text` and `QwenVLJudge.build_inputs` emit. "Yes" and "No"
are single tokens, as the judge's two-token read-out needs.
"""

from __future__ import annotations

from pathlib import Path

from ..judges.prompts import QuestionTemplates
from .world import corpus

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>", "[UNK]"]
#: The backbone's chat template (a Qwen3-style user turn, no thinking block; no image pads).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _fixed_texts() -> list[str]:
    t = QuestionTemplates()
    texts = [t.edit, t.identity, t.remove_edit, t.remove_identity, t.style_identity, t.background_identity]
    texts += ["system You are a helpful assistant.", "user assistant", "Yes No", "do nothing.",
              "low quality, artifacts", "Describe this image."]  # the last: the judge's captioning prompt
    return texts


def train_tokenizer(out: str | Path | None = None, seed: int = 0):
    """Train the WordLevel tokenizer on the world's texts; return a `PreTrainedTokenizerFast` (saved to `out`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation runs; newlines vanish
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1)
    tok.train_from_iterator(_fixed_texts() + corpus(3000, seed), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=SPECIALS[1:7],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    for word in ("Yes", "No"):
        assert len(fast.encode(word, add_special_tokens=False)) == 1, word
    if out is not None:
        fast.save_pretrained(str(out))
    return fast
