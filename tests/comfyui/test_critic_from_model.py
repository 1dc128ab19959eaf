"""The DMD critic on ComfyUI's own MODEL and VAE (NPEditCriticFromModel) scores and refines as the pack's own critic.

Both sides get the same Z-Image base weights (`test_core_nodes.backbone`, the size ComfyUI's Z-Image class takes),
the same fake-score export (our layout: the node converts it for ComfyUI's LoRA code), the same VAE (a FLUX-sized
AutoencoderKL, random: ComfyUI's VAE class builds only that size), caption features, images, judge and seed. Ours
is `realism_scores` / `refine_edits` on `Critic.from_export`; ComfyUI's is `critic_check.py`, each node run inside
inference mode as ComfyUI's executor runs it, in the tier's own Python.
"""

import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from npedit_core.backbones.z_image import ZImageBackbone
from npedit_core.config import LossConfig
from npedit_core.critic import Critic, realism_scores
from npedit_core.judges.qwen2_5_vl import Qwen25VLJudge
from npedit_core.refine import refine_edits
from tests.comfyui.test_core_nodes import CONFIG, backbone
from tests.comfyui.test_lora_loader import z_image_unet_config
from tests.core.exports import write_exports

CHECK = Path(__file__).with_name("critic_check.py")
CAPTION = "a photo under a pink sky"


def flux_vae(seed: int = 0):
    """A diffusers AutoencoderKL in the FLUX VAE's configuration (random weights), the size ComfyUI's VAE builds."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                             block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
                             scaling_factor=0.3611, shift_factor=0.1159).eval()


def with_vae(vae) -> ZImageBackbone:
    b = backbone()
    return ZImageBackbone(b.transformer, vae, b.text_encoder, b.tokenizer)


def test_critic_on_comfyuis_model_scores_and_refines_as_ours(comfyui, tmp_path, tiny_models):
    tree, python = comfyui
    vae = flux_vae()
    exports = write_exports(with_vae(vae), tmp_path / "exports")
    fake = exports["fake"]
    ours = Critic.from_export(with_vae(vae), fake)
    save_file({k: v.contiguous() for k, v in backbone().transformer.state_dict().items()}, str(tmp_path / "base.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    text = ours.backbone.encode_text([CAPTION, LossConfig().negative_prompt])
    save_file({"caption": text.embeds[0][text.mask[0]][None].contiguous(),
               "negative": text.embeds[1][text.mask[1]][None].contiguous()}, str(tmp_path / "context.safetensors"))
    gen = torch.Generator().manual_seed(3)
    reference, edited = torch.rand(1, 3, 64, 48, generator=gen), torch.rand(1, 3, 64, 48, generator=gen)
    save_file({"reference": reference.movedim(1, -1).contiguous(), "edited": edited.movedim(1, -1).contiguous()},
              str(tmp_path / "images.safetensors"))
    models, names = tiny_models
    judge_dir = models / "LLM" / names["judge"].rstrip("/")
    job = {"config": z_image_unet_config(CONFIG), "base": str(tmp_path / "base.safetensors"),
           "vae": str(tmp_path / "vae.safetensors"), "fake_dir": str(fake.parent), "fake_name": fake.name,
           "context": str(tmp_path / "context.safetensors"), "images": str(tmp_path / "images.safetensors"),
           "judge": str(judge_dir), "seed": 5, "guidance": 3.5, "steps": 2, "lr": 0.02, "w_vlm": 0.02, "w_dmd": 1.0,
           "instruction": "make the sky pink", "edit_type": "color", "editor_name": exports["editor"].name,
           "out": str(tmp_path / "refined.safetensors")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    run = subprocess.run([str(python), str(CHECK), str(tmp_path / "job.json")], cwd=tree, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    theirs = load_file(job["out"])["image"].movedim(-1, 1)

    expected = realism_scores(ours, edited, CAPTION, seed=job["seed"], guidance=job["guidance"]).tolist()
    judge = Qwen25VLJudge.from_pretrained(str(judge_dir), dtype=torch.float32)
    refined, logs = refine_edits(judge, ours, reference, edited, job["instruction"], CAPTION, job["edit_type"],
                                 steps=job["steps"], lr=job["lr"], w_vlm=job["w_vlm"], w_dmd=job["w_dmd"], seed=job["seed"])
    first = f"step 1/2: loss {logs[0]['loss']:.4f}  vlm_loss {logs[0]['vlm_loss']:.4f}  dmd_loss {logs[0]['dmd_loss']:.4f}"
    diff = float((theirs - refined).abs().max())
    print(f"realism ComfyUI {report['realism']} ours {expected}; refine report {report['refine_report']!r} ours "
          f"{first!r}; refined image max |ComfyUI - ours| {diff:.3g}")
    assert report["fake_patches"] > 0 and report["teacher_patches"] == 0  # the LoRA is on the clone only
    assert abs(report["realism"][0] - expected[0]) < 1e-4 * expected[0]
    assert report["refine_report"].splitlines()[0] == first  # the objective before any step: same teacher, fake, judge
    assert diff < 1e-3
    assert report["errors"] == {
        "no_conditioning": "NPEditError: positive, negative: a critic on ComfyUI's MODEL reads its text as conditioning: "
                           "connect CLIP Text Encode outputs for the caption and the negative prompt",
        "editor_weights": f"NPEditError: {exports['editor']}: exported with --role editor; the critic needs the fake "
                          "score (--role fake)"}
