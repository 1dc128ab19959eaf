"""Run by a ComfyUI checkout's own Python (cwd: the ComfyUI tree): the DMD critic on ComfyUI's own MODEL and VAE.

    python critic_check.py JOB.json  ->  one JSON line on stdout; the refined image in JOB["out"]

As a user's graph runs it, every node inside torch.inference_mode() as ComfyUI's executor does (the models built
there too, as ComfyUI's loaders build them): ComfyUI's Z-Image (`core_nodes_check.z_image_patcher`), ComfyUI's VAE
from a diffusers AutoencoderKL state dict, the pack's `NPEditCriticFromModel` on them with the fake-score export
JOB["fake_dir"]/JOB["fake_name"] (from models/loras), then `NPEditDMDCritic` and `NPEditRefine` with the caption
and negative prompt as CONDITIONING ([[features (1, L, D), {}]], from JOB["context"] keys "caption", "negative").
Also the errors of two mistakes: no conditioning, and the editor export (JOB["editor_name"]) as fake weights.

JOB: {"config", "base" (as core_nodes_check), "vae", "fake_dir", "fake_name", "context", "images" (file: keys
      "reference", "edited", ComfyUI IMAGEs), "judge" (a judge folder), "seed", "guidance", "steps", "lr", "w_vlm",
      "w_dmd", "instruction", "edit_type", "editor_name", "out"}
"""

import importlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from core_nodes_check import import_pack, z_image_patcher  # noqa: E402


def main(job_path: str) -> None:
    sys.path.insert(0, os.getcwd())  # the ComfyUI tree
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.sd
    import comfy.utils
    import folder_paths
    from comfy.utils import load_torch_file

    pack = import_pack()
    comfy_critic = importlib.import_module("npedit_pack.nodes.comfy_critic")
    scoring = importlib.import_module("npedit_pack.nodes.scoring")
    refine = importlib.import_module("npedit_pack.nodes.refine")
    job = json.loads(Path(job_path).read_text())
    folder_paths.add_model_folder_path("loras", job["fake_dir"])
    context = load_torch_file(job["context"])
    images = load_torch_file(job["images"])
    judge = pack.npedit_core.models.load_judge(job["judge"], "auto", "float32")
    with torch.inference_mode():
        patcher, _ = z_image_patcher(job)
        vae = comfy.sd.VAE(sd=load_torch_file(job["vae"]))
        positive, negative = [[context["caption"], {}]], [[context["negative"], {}]]
        (critic,) = comfy_critic.NPEditCriticFromModel.execute(patcher, vae, job["fake_name"]).result
        realism, report = scoring.NPEditDMDCritic.execute(critic, images["edited"], "", job["seed"], job["guidance"],
                                                          positive=positive, negative=negative).result
        refined, refine_report = refine.NPEditRefine.execute(
            critic, images["reference"], images["edited"], job["instruction"], job["edit_type"], "", "", job["steps"],
            job["lr"], job["w_vlm"], job["w_dmd"], job["seed"], judge=judge, positive=positive, negative=negative).result
        errors = {"no_conditioning": error_of(scoring.NPEditDMDCritic.execute, critic, images["edited"], "a caption",
                                              job["seed"], job["guidance"]),
                  "editor_weights": error_of(comfy_critic.NPEditCriticFromModel.execute, patcher, vae, job["editor_name"])}
    comfy.utils.save_torch_file({"image": refined.contiguous()}, job["out"])
    print(json.dumps({"realism": realism, "report": report, "refine_report": refine_report, "errors": errors,
                      "fake_patches": len(critic.fake_model.patches), "teacher_patches": len(patcher.patches)}))


def error_of(fn, *args) -> str:
    """The one-line message of the error `fn(*args)` raises (its type first)."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001  (reported, then asserted by the test)
        return f"{type(exc).__name__}: {exc}"
    return "no error"


if __name__ == "__main__":
    main(sys.argv[1])
