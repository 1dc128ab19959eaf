"""The pack's own io types: the loaded models travel between nodes as these (any Python object inside)."""

from comfy_api.latest import io

#: An editor: the base backbone with NP-Edit weights applied (`npedit_core.backbones.Backbone`).
Editor = io.Custom("NPEDIT_EDITOR")
#: A VLM judge (`npedit_core.judges.Judge`).
Judge = io.Custom("NPEDIT_JUDGE")
#: The DMD critic: teacher (base model) + fake score (`npedit_core.critic.Critic`).
Critic = io.Custom("NPEDIT_CRITIC")
