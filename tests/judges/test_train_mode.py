"""The judge in train() mode (needed for gradient checkpointing) computes exactly what it does in eval().

The three families' real configs carry dropout (attention, InternViT hidden/projection): the tiny judges
are rebuilt here with every such rate at 0.5, so an active dropout could not go unnoticed.
"""

import pytest
import torch

from npedit_core.judges import judge_class
from npedit_core.judges.prompts import edit_questions

RATES = ("attention_dropout", "hidden_dropout_prob", "projection_dropout", "hidden_dropout", "dropout")


def with_dropout(judge):
    config = judge.model.config
    touched = []
    for sub in (config.text_config, config.vision_config):
        for name in RATES:
            if isinstance(getattr(sub, name, None), float):
                setattr(sub, name, 0.5)
                touched.append(name)
    torch.manual_seed(0)
    judge.model = type(judge.model)(config).eval().requires_grad_(False)
    return touched


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "internvl"])
def test_judge_loss_is_deterministic_in_checkpointing_train_mode(family, qwen_tokenizer_path):
    judge = judge_class(family).tiny(seed=0, tokenizer_path=qwen_tokenizer_path)
    assert "attention_dropout" in with_dropout(judge)
    g = torch.Generator().manual_seed(1)
    ref, edited = torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g)

    def loss_and_grad():
        image = edited.clone().requires_grad_(True)
        logits = judge.answer_logits(edit_questions(ref, image, "make the cup red", "color"))
        loss = -torch.nn.functional.logsigmoid(logits[:, 0] - logits[:, 1]).mean()
        loss.backward()
        return loss.detach(), image.grad

    eval_loss, eval_grad = loss_and_grad()
    judge.set_gradient_checkpointing(True)
    assert judge.model.training
    assert any(getattr(m, "gradient_checkpointing", False) for m in judge.model.modules())
    for _ in range(2):
        loss, grad = loss_and_grad()
        torch.testing.assert_close(loss, eval_loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, eval_grad, rtol=1e-5, atol=1e-9)
    judge.set_gradient_checkpointing(False)
    assert not judge.model.training
