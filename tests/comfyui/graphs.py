"""Point the example workflows (which name real models: FLUX.2-klein-base-4B, Qwen2.5-VL-7B) at the tiny fixtures."""

import copy

from tests.comfyui.conftest import PHOTO


def localize(graph: dict, names: dict, family: str = "z_image") -> dict:
    """A copy of `graph` that loads the tiny `family` models (float32) and the test photo."""
    graph = copy.deepcopy(graph)
    if family == "z_image":
        base = dict(family="z_image", model=names["zimage"], text_encoder="none", vae="none", tokenizer="auto")
        weights = names["zimage_editor"]
    else:
        base = dict(family="flux2_klein", model=names["model"], text_encoder=names["text_encoder"], vae=names["vae"],
                    tokenizer=names["tokenizer"])
        weights = names["flux2_editor"]
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":
            inputs["image"] = PHOTO
        elif node["class_type"] == "NPEditLoadEditor":
            inputs.update(base, dtype="float32", weights=weights)
        elif node["class_type"] == "NPEditLoadCritic":
            inputs.update(base, dtype="float32", fake_weights=names["zimage_fake"])
        elif node["class_type"] == "NPEditLoadJudge":
            inputs.update(model=names["judge"], dtype="float32")
        elif node["class_type"] == "NPEditRefine":
            inputs.update(steps=2)  # the workflow's 8 steps only cost time here
    return graph
