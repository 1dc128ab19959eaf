"""`python -m train_cli comfyui-install COMFYUI_DIR`: the shipped micro-world models where ComfyUI keeps models.

Copies, so that a fresh ComfyUI with the pack lists them and the micro-world example workflow runs:
- models/npedit/microworld/teacher/     the FLUX.2-klein teacher (with the world's own autoencoder in vae/)
- models/npedit/microworld/judge/       the Qwen2.5-VL judge
- models/npedit/microworld/*.safetensors  the shipped editors (NP-Edit exports)
- input/npedit_microworld_scene.png     the example scene (a held-out micro-world scene, rendered here)
- user/default/workflows/NP-Edit micro-world edit.json  the example workflow, for ComfyUI's workflow browser
A file already there and identical is left alone; one that differs is replaced only with --force.
"""

from __future__ import annotations

import filecmp
import io
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "microworld_edit.json"
WORKFLOW_NAME = "NP-Edit micro-world edit.json"


def _planned(comfyui: Path) -> list[tuple[Path | bytes, Path]]:
    """(source file or bytes, destination) for everything the command writes."""
    from npedit_core.microworld.editor import JUDGE_DIR, TEACHER_DIR, WEIGHTS, example
    from npedit_core.microworld.world import render

    models = comfyui / "models" / "npedit" / "microworld"
    plan: list[tuple[Path | bytes, Path]] = []
    for folder, name in ((TEACHER_DIR, "teacher"), (JUDGE_DIR, "judge")):
        plan += [(f, models / name / f.relative_to(folder)) for f in sorted(folder.rglob("*")) if f.is_file()]
    plan += [(f, models / f.name) for f in sorted(WEIGHTS.glob("*.safetensors"))]
    plan.append((png_bytes(render(example()[0])), comfyui / "input" / "npedit_microworld_scene.png"))
    plan.append((WORKFLOW, comfyui / "user" / "default" / "workflows" / WORKFLOW_NAME))
    return plan


def _same(source: Path | bytes, dest: Path) -> bool:
    if isinstance(source, bytes):
        return dest.read_bytes() == source
    return filecmp.cmp(source, dest, shallow=False)


def install(comfyui: str | Path, force: bool = False, log=print) -> dict[str, int]:
    """Copy the plan into `comfyui`; returns counts of written / unchanged files. Refuses (NPEditError) a folder
    that is not a ComfyUI, and files that differ from ours unless `force` (naming them, nothing written)."""
    from npedit_core.errors import NPEditError

    comfyui = Path(comfyui)
    if not (comfyui / "models").is_dir() or not ((comfyui / "folder_paths.py").is_file() or (comfyui / "custom_nodes").is_dir()):
        raise NPEditError(f"{comfyui} is not a ComfyUI folder (expected models/ and custom_nodes/ in it: the ComfyUI "
                          "folder, or the folder given to its --base-directory)")
    plan = _planned(comfyui)
    existing = [(s, d) for s, d in plan if d.exists()]
    differ = [d for s, d in existing if not d.is_file() or not _same(s, d)]
    if differ and not force:
        names = ", ".join(str(d.relative_to(comfyui)) for d in differ[:4]) + (" ..." if len(differ) > 4 else "")
        raise NPEditError(f"{len(differ)} file(s) already in {comfyui} differ from the pack's ({names}); "
                          "rerun with --force to replace them")
    written = 0
    for source, dest in plan:
        if dest.exists() and dest not in differ:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        try:  # write beside, then rename: an interrupted copy never leaves a truncated model file
            if isinstance(source, bytes):
                tmp.write_bytes(source)
            else:
                shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise NPEditError(f"cannot write {dest} ({err.strerror or err})") from err
        written += 1
    log(f"{written} file(s) written, {len(plan) - written} already up to date, under {comfyui}")
    log("models: models/npedit/microworld/ (teacher/, judge/, editors); input: npedit_microworld_scene.png; "
        f"workflow: {WORKFLOW_NAME}. Refresh ComfyUI (press R) or restart it to see them.")
    return {"written": written, "unchanged": len(plan) - written}


def png_bytes(image) -> bytes:
    """(3, H, W) float tensor in [0, 1] as PNG bytes."""
    from PIL import Image

    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
