"""Run by a ComfyUI checkout's own Python (cwd: the ComfyUI tree): would Load Diffusion Model take this file?

    python unet_check.py SHAPES.json  ->  one JSON line on stdout

SHAPES: {key: shape} of a diffusion-model file. The tensors are made on the meta device (no memory), then the
steps of `comfy.sd.load_diffusion_model_state_dict` (what UNETLoader runs) up to the weight load: prefix
detection, model detection, the model built from the detected config, `process_unet_state_dict`. Reports the
detected class and every key the model lacks, does not have, or has in another shape.
"""

import json
import os
import sys

import torch


def main(path: str) -> None:
    sys.path.insert(0, os.getcwd())
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_detection
    import comfy.utils

    shapes = json.loads(open(path).read())
    sd = {k: torch.empty(shape, dtype=torch.bfloat16, device="meta") for k, shape in shapes.items()}
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    sd = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True) or sd
    model_config = comfy.model_detection.model_config_from_unet(sd, "")
    if model_config is None:
        print(json.dumps({"detected": None}))
        return
    model_config.set_inference_dtype(torch.bfloat16, None)
    model = model_config.get_model(sd, "", device="meta")
    to_load = model_config.process_unet_state_dict(dict(sd))
    want = {k: list(v.shape) for k, v in model.diffusion_model.state_dict().items()}
    print(json.dumps({
        "detected": type(model_config).__name__, "unet_config": {k: v for k, v in model_config.unet_config.items()
                                                                 if isinstance(v, (int, float, str, list, bool))},
        "missing": sorted(set(want) - set(to_load)), "unexpected": sorted(set(to_load) - set(want)),
        "wrong_shape": sorted(k for k in set(want) & set(to_load) if list(to_load[k].shape) != want[k]),
        "keys": len(want)}))


if __name__ == "__main__":
    main(sys.argv[1])
