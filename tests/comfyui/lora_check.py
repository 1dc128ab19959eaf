"""Run by a ComfyUI checkout's own Python (cwd: the ComfyUI tree): does an NP-Edit `--layout comfyui` LoRA load
through ComfyUI's core `LoraLoaderModelOnly` onto ComfyUI's own model class, and patch the weights we merged?

    python lora_check.py JOB.json  ->  one JSON line on stdout

JOB: {"family": "flux2_klein" | "z_image", "config": {unet_config entries of the small model},
      "base": file, "merged": file, "lora_dir": folder, "lora_name": file name in it}
`base` and `merged` hold the transformer before and after our own LoRA merge: in ComfyUI's (BFL) names for
FLUX.2-klein, in diffusers names for Z-Image (mapped here by ComfyUI's own table, `z_image_to_diffusers`,
the one its LoRA loader uses). The model is ComfyUI's class built from the config, since ComfyUI's
detection only accepts the full-size Z-Image (dim 3840) and FLUX.2 (48 heads).
"""

import json
import logging
import os
import sys

import torch


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def to_comfy(sd: dict, mapping: dict) -> dict:
    """diffusers-named Z-Image weights -> ComfyUI names; (key, (dim, start, length)) entries are fused slices."""
    out, parts = {}, {}
    for key, value in sd.items():
        target = mapping.get(key)
        if target is None:
            out["unmapped." + key] = value
        elif isinstance(target, str):
            out[target] = value
        else:
            name, (dim, start, _) = target
            parts.setdefault(name, []).append((start, dim, value))
    for name, pieces in parts.items():
        pieces.sort(key=lambda p: p[0])
        out[name] = torch.cat([v for _, _, v in pieces], dim=pieces[0][1])
    return out


def z_image_mapping(config: dict) -> dict:
    """ComfyUI's own diffusers -> ComfyUI Z-Image key table (`z_image_to_diffusers`), without its model prefix."""
    import comfy.utils

    prefix = "diffusion_model."
    return {k: (v[len(prefix):] if isinstance(v, str) else (v[0][len(prefix):], v[1]))
            for k, v in comfy.utils.z_image_to_diffusers(config, output_prefix=prefix).items()}


def main(job_path: str) -> None:
    sys.path.insert(0, os.getcwd())  # the ComfyUI tree (a script's own folder is what Python puts first)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # as the tier's server runs (--cpu); set before model_management loads
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils
    import folder_paths
    import nodes

    job = json.loads(open(job_path).read())
    base, merged = comfy.utils.load_torch_file(job["base"]), comfy.utils.load_torch_file(job["merged"])
    if job["family"] == "flux2_klein":
        config = comfy.model_detection.detect_unet_config({"diffusion_model." + k: v for k, v in base.items()},
                                                         "diffusion_model.")
        config.update(job["config"])
        model_config = comfy.supported_models.Flux2(config)
    else:
        config = {"image_model": "lumina2", **job["config"]}
        model_config = comfy.supported_models.ZImage(config)
        mapping = z_image_mapping(config)
        base, merged = to_comfy(base, mapping), to_comfy(merged, mapping)
    model = model_config.get_model({})
    # At a small dim the timestep MLP's width differs (diffusers' Z-Image fixes 1024, ComfyUI takes min(dim, 1024));
    # such weights stay ComfyUI's and are reported: no LoRA touches them.
    shapes = {k: v.shape for k, v in model.diffusion_model.state_dict().items()}
    mismatched = sorted(k for k, v in base.items() if k in shapes and v.shape != shapes[k])
    result = model.diffusion_model.load_state_dict(
        {k: v for k, v in base.items() if not k.startswith("unmapped.") and k not in mismatched}, strict=False)
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)

    folder_paths.add_model_folder_path("loras", job["lora_dir"])
    warnings = Warnings()
    logging.getLogger().addHandler(warnings)
    (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(patcher, job["lora_name"], 1.0)
    logging.getLogger().removeHandler(warnings)
    patched.patch_model(device_to=cpu)
    after = {k: v.detach().float() for k, v in patched.model.diffusion_model.state_dict().items()}
    report = {"missing": sorted(set(result.missing_keys) - set(mismatched)), "unexpected": sorted(result.unexpected_keys),
              "mismatched": mismatched,
              "unmapped": sorted(k for k in base if k.startswith("unmapped.")),
              "warnings": [m for m in warnings.messages if "lora" in m.lower() or "not loaded" in m.lower()],
              "patched": len(patched.patches), "changed": {}, "max_diff": 0.0, "absent": []}
    for key, want in merged.items():
        if key.startswith("unmapped.") or key in mismatched:
            continue
        if key not in after:
            report["absent"].append(key)
            continue
        diff = float((after[key] - want.float()).abs().max())
        if not torch.equal(want, base[key]):
            report["changed"][key] = diff
        report["max_diff"] = max(report["max_diff"], diff)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
