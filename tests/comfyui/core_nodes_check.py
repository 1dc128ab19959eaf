"""Run by a ComfyUI checkout's own Python (cwd: the ComfyUI tree): an NP-Edit Z-Image edit through core nodes.

    python core_nodes_check.py JOB.json  ->  one JSON line on stdout; the edited latents in JOB["out"]

The graph a user builds, node by node (each node's own `execute`, the server is not involved): ComfyUI's Z-Image
model (built from JOB["config"], since 0.3.75's detection only accepts the full-size dim 3840), our
`--layout comfyui` LoRA through core `LoraLoaderModelOnly`, the pack's `NPEditZImageReference` with the reference
latent, `NPEditSigmas` and `NPEditStepSampler` into core `SamplerCustom` (cfg 1) on an empty latent of the
reference's size.

JOB: {"config": unet_config, "base": transformer (diffusers names, or the original keys of a `--layout comfyui`
      file), "lora_dir", "lora_name" (null: none),
      "context": caption features file (key "context", (1, L, D)), "reference": file (key "latent": the
      reference as our backbone encodes it, i.e. after the latent format's process_in),
      "batch", "seed", "steps", "shift", "step", "eta", "out": file to write (key "x0", process_in applied),
      optionally "judge" (a judge folder), "vae" (a diffusers AutoencoderKL folder), "image" (file, key "image": the
      input as a ComfyUI IMAGE) and "instruction": then the batch is decoded and NP-Edit Select Best picks from it}
"""

import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from lora_check import to_comfy, z_image_mapping  # noqa: E402  (this folder's: diffusers -> ComfyUI Z-Image names)

PACK = Path(__file__).resolve().parents[2]


def import_pack():
    """The repository as the package ComfyUI would import from custom_nodes/ (relative imports need a package)."""
    folder = Path(tempfile.mkdtemp())
    (folder / "npedit_pack").symlink_to(PACK, target_is_directory=True)
    sys.path.insert(0, str(folder))
    return importlib.import_module("npedit_pack")


def select_best(pack, job: dict, latents: torch.Tensor) -> dict:
    """Decode the core sampler's batch (as VAE Decode does: process_out latents through the VAE) and run the pack's
    NP-Edit Select Best on it against the reference image, with the judge its loader would give."""
    from diffusers import AutoencoderKL

    scoring = importlib.import_module("npedit_pack.nodes.scoring")
    vae = AutoencoderKL.from_pretrained(job["vae"]).eval()
    with torch.no_grad():
        images = (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1).movedim(1, -1).contiguous()  # a ComfyUI IMAGE
    from comfy.utils import load_torch_file

    reference = load_torch_file(job["image"])["image"]  # the input image, a ComfyUI IMAGE (1, H, W, 3)
    judge = pack.npedit_core.models.load_judge(job["judge"], "auto", "float32")
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        out = scoring.NPEditSelectBest.execute(judge, reference, images, job["instruction"], "color", "")
    best, index, score, report = out.result
    return {"index": index, "score": score, "report": report, "candidates": list(images.shape),
            "best_is_candidate": torch.equal(best, images[index:index + 1]),
            "distinct": not torch.equal(images[0], images[1])}


def z_image_patcher(job: dict):
    """(ModelPatcher, load_state_dict result) of ComfyUI's Z-Image built from JOB["config"] with JOB["base"]'s weights."""
    import comfy.model_patcher
    import comfy.supported_models
    from comfy.utils import load_torch_file

    config = {"image_model": "lumina2", **job["config"]}
    model_config = comfy.supported_models.ZImage(config)
    base = load_torch_file(job["base"])
    if "x_embedder.weight" not in base:  # diffusers names (a LoRA's base); else a full editor in the original keys
        base = to_comfy(base, z_image_mapping(config))
    model = model_config.get_model({})
    result = model.diffusion_model.load_state_dict(base, strict=False)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu), result


def main(job_path: str) -> None:
    sys.path.insert(0, os.getcwd())  # the ComfyUI tree
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.utils
    import folder_paths
    import nodes
    from comfy.utils import load_torch_file
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    pack = import_pack()
    core_sampling = importlib.import_module("npedit_pack.nodes.core_sampling")
    job = json.loads(Path(job_path).read_text())
    patcher, result = z_image_patcher(job)
    if job["lora_name"]:
        folder_paths.add_model_folder_path("loras", job["lora_dir"])
        (patcher,) = nodes.LoraLoaderModelOnly().load_lora_model_only(patcher, job["lora_name"], 1.0)

    latent_format = patcher.get_model_object("latent_format")
    reference = latent_format.process_out(load_torch_file(job["reference"])["latent"])  # as VAE Encode gives it
    (patched,) = core_sampling.NPEditZImageReference.execute(patcher, {"samples": reference}).result
    (sigmas,) = core_sampling.NPEditSigmas.execute(job["steps"], job["shift"]).result
    (sampler,) = core_sampling.NPEditStepSampler.execute(job["step"], job["eta"]).result
    context = load_torch_file(job["context"])["context"]
    cond = [[context, {}]]
    empty = {"samples": torch.zeros(job["batch"], 16, *reference.shape[2:])}
    out, _ = SamplerCustom.execute(patched, True, job["seed"], 1.0, cond, cond, sampler, sigmas, empty).result
    comfy.utils.save_torch_file({"x0": latent_format.process_in(out["samples"]).contiguous()}, job["out"])
    report = {"missing": sorted(result.missing_keys), "unexpected": sorted(result.unexpected_keys),
              "sigmas": [round(float(s), 6) for s in sigmas], "patches": len(patcher.patches)}
    if job.get("judge"):
        report["select_best"] = select_best(pack, job, out["samples"])
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
