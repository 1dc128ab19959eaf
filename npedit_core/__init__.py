"""NP-Edit core: backbones, judges, the few-step edit sampler and the training losses.

This package knows nothing of ComfyUI or the command line; `nodes/` and `train_cli/` adapt it.
"""

from .errors import CheckpointError, NPEditError

__all__ = ["CheckpointError", "NPEditError"]
__version__ = "0.1.0"
