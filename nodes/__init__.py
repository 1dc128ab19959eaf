"""The NP-Edit ComfyUI nodes (V3 API): thin adapters over `npedit_core`; `comfy_entrypoint` registers them.

Imports are relative (`..npedit_core`): ComfyUI loads this pack from its folder as a package, and the
core is not necessarily installed as a top-level package there.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import folders
from .comfy_critic import NPEditCriticFromModel
from .core_sampling import NPEditSigmas, NPEditStepSampler, NPEditZImageReference
from .loaders import NPEditLoadCritic, NPEditLoadEditor, NPEditLoadJudge
from .refine import NPEditRefine
from .sampler import NPEditSampler
from .scoring import NPEditDMDCritic, NPEditSelectBest, NPEditVLMScore

NODES: list[type[io.ComfyNode]] = [
    NPEditLoadEditor,
    NPEditLoadJudge,
    NPEditLoadCritic,
    NPEditCriticFromModel,
    NPEditSampler,
    NPEditVLMScore,
    NPEditDMDCritic,
    NPEditSelectBest,
    NPEditRefine,
    NPEditSigmas,
    NPEditStepSampler,
    NPEditZImageReference,
]


class NPEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> NPEditExtension:
    folders.register()
    return NPEditExtension()
