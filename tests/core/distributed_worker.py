"""Run by torchrun in test_trainer_distributed.py: train a few steps, save this rank's weights."""

import sys
from pathlib import Path

import torch

from npedit_core.config import load_config
from npedit_core.trainer import Trainer

out, mode, *overrides = sys.argv[1:]
trainer = Trainer(load_config(None, overrides), log=lambda *_: None)
if mode == "nosync":
    trainer._all_reduce = lambda params: None  # the control: ranks must then drift apart
if mode == "nan_on_rank1" and trainer.acc.process_index == 1:
    editor_losses = trainer.editor_losses

    def nan_at_the_first_step(batch):  # only this rank's first editor loss is NaN
        loss, logs = editor_losses(batch)
        return (loss * float("nan") if trainer.step == 0 else loss), logs

    trainer.editor_losses = nan_at_the_first_step
trainer.run()
rank = trainer.acc.process_index
torch.save({"editor": trainer.roles.editor_state_dict(), "fake": trainer.roles.fake_state_dict(),
            "rows": trainer.sampler.state_dict(), "step": trainer.step,
            "sharded_params": sum(type(p).__name__ == "DTensor" for p in trainer.roles.editor_parameters())},
           Path(out) / f"rank{rank}.pt")
