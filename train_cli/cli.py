"""`python -m train_cli`: train, edit, export, check-config, demo, prepare-data, eval, convert and comfyui-install.

Thin by design: parse arguments, call one core function, print one line per result. Every
NPEditError becomes a one-line message on stderr and exit code 2; nothing already trained is lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

CONFIG_HELP = ("YAML config file (defaults, then this file, then the overrides); repeat -c to layer files, "
               "e.g. -c configs/flux2_klein_qwen25vl_lora.yaml -c configs/warmup.yaml")
OVERRIDE_HELP = "config overrides as key.sub=value, e.g. train.steps=100 model.path=/models/klein"


def _config(args):
    from npedit_core.config import load_config

    return load_config(args.config, args.overrides)


def _warn_distilled(cfg) -> None:
    from npedit_core.distilled import distilled_warning

    warning = distilled_warning(cfg.model)
    if warning:
        print(warning, file=sys.stderr)


def cmd_check_config(args) -> int:
    import yaml

    from npedit_core.config import to_dict

    cfg = _config(args)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    _warn_distilled(cfg)
    return 0


def cmd_train(args) -> int:
    from npedit_core.trainer import run_training

    cfg = _config(args)
    if args.allow_config_change:
        cfg.train.allow_config_change = True
    _warn_distilled(cfg)
    trainer = run_training(cfg)
    print(f"run directory: {trainer.run_dir}")
    return 130 if trainer.interrupted else 0  # 130: stopped by Ctrl-C (after saving), as shells report SIGINT


def cmd_export(args) -> int:
    from npedit_core.export import export_checkpoint

    out = export_checkpoint(args.run, args.out, role=args.role, layout=args.layout)
    print(f"wrote {out}")
    return 0


def _split_overrides(values: list[str]) -> tuple[list[str], list[str]]:
    """(values, overrides): `section.key=value` items that a nargs="+" option swallowed are overrides."""
    import re

    from npedit_core.config import NPEditConfig

    sections = "|".join(f.name for f in dataclasses.fields(NPEditConfig))
    pattern = re.compile(rf"^(?:{sections})\.[A-Za-z_][\w.]*=")
    return [v for v in values if not pattern.match(v)], [v for v in values if pattern.match(v)]


def cmd_edit(args) -> int:
    from npedit_core.editing import edit_files, output_paths

    images, extra = _split_overrides(args.images)
    instructions, more = _split_overrides(args.instruction)
    existing = {p for p in output_paths(images, args.out) if p.exists()}
    written = edit_files(
        images=images, instructions=instructions, out_dir=args.out, editor=args.editor,
        config_path=args.config, overrides=[*args.overrides, *extra, *more], seed=args.seed, masks=args.mask,
    )
    for source, path in zip(images, written):
        print(f"wrote {path} (from {source}{'; replaced an older file' if path in existing else ''})")
    return 0


def cmd_demo(args) -> int:
    from npedit_core.demo import run_demo

    run_demo(args.out, overrides=args.overrides, fresh=args.fresh)
    return 0


def cmd_prepare_data(args) -> int:
    from npedit_core.errors import NPEditError
    from npedit_core.prepare import HFGenerator, convert_dataset, prepare_folder

    if bool(args.images) == bool(args.dataset):
        raise NPEditError("prepare-data: give either --images DIR (with --model) or --dataset LAYOUT (with --metadata)")
    if args.dataset:
        if not args.metadata or not args.image_root:
            raise NPEditError("prepare-data --dataset: --metadata and --image-root are required")
        report = convert_dataset(args.metadata, args.image_root, args.out, layout=args.dataset,
                                 edited_caption_fallback=args.caption_fallback, check_images=args.check_images)
    else:
        if not args.model:
            raise NPEditError("prepare-data --images: --model (a local LLM or VLM folder) is required")
        generator = HFGenerator.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                                max_new_tokens=args.max_new_tokens)
        report = prepare_folder(args.images, args.out, generator, mix=args.mix, edits_per_image=args.edits_per_image,
                                batch_size=args.batch_size, seed=args.seed, verify=args.verify, captions=args.captions,
                                retry_rejects=args.retry_rejects, limit=args.limit,
                                progress=lambda done, total: print(f"{done}/{total}", file=sys.stderr))
    for item in report.rejects:
        print(f"skipped {item.image}: {item.reason}", file=sys.stderr)
    for copy, kept in report.duplicates:
        print(f"duplicate {copy} (kept {kept})", file=sys.stderr)
    print(f"wrote {args.out}: {report.summary()}")
    return 0


def cmd_eval(args) -> int:
    from npedit_core.errors import NPEditError
    from npedit_core.evaluate import NPEditEditor, PipelineEditor, evaluate, read_gedit_bench
    from npedit_core.models import build_backbone, build_judge, load_judge

    cfg = _config(args)
    steps = args.steps or cfg.sampler.steps
    samples = read_gedit_bench(args.bench, language=args.language or None, task_types=args.task_types, limit=args.limit)
    editors = []
    if not args.skip_ours:
        backbone = build_backbone(cfg.model, device=args.device)
        if args.editor:
            from npedit_core.export import load_editor

            load_editor(backbone, args.editor)
        editors.append(NPEditEditor(backbone, name=args.name, steps=steps, shift=cfg.sampler.shift, eta=cfg.sampler.eta,
                                    step=cfg.sampler.step, max_area=args.max_area))
    for folder in args.pipeline or []:
        editors.append(PipelineEditor.from_pretrained(folder, dtype=args.pipeline_dtype, device=args.device, steps=steps,
                                                      max_area=args.max_area))
    if not editors:
        raise NPEditError("eval: nothing to evaluate (--skip-ours without --pipeline)")
    judge = (load_judge(args.judge, family=args.judge_family, dtype=cfg.judge.dtype, device=args.device) if args.judge
             else build_judge(cfg.judge, device=args.device))
    results = evaluate(samples, editors, judge, args.out, seed=args.seed,
                       progress=lambda name, done, total: print(f"{name}: {done}/{total}", file=sys.stderr))
    for name, result in results.items():
        o = result["summary"]["overall"]
        print(f"{name}: SC {o['SC']:.2f}  PQ {o['PQ']:.2f}  O {o['O']:.2f}  ({o['n']} samples, {result['steps']} steps)")
    print(f"wrote {Path(args.out) / 'results.json'} and results.md")
    return 0


def cmd_convert(args) -> int:
    from npedit_core.convert_npedit import convert_npedit_checkpoint

    out = convert_npedit_checkpoint(args.checkpoint, args.out, reference=args.reference, dtype=args.dtype, layout=args.layout)
    print(f"wrote {out}")
    return 0


def cmd_comfyui_install(args) -> int:
    from train_cli.comfyui_install import install

    install(args.comfyui, force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train_cli", description="Train and run NP-Edit image editors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p):
        p.add_argument("--config", "-c", action="append", help=CONFIG_HELP)
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
        return p

    p = with_config(sub.add_parser("train", help="train an editor (train.stage=warmup or npedit)",
                                   description="Train an editor. Resumes from RUN_DIR/checkpoints/latest when it exists; "
                                               "Ctrl-C finishes the current step, saves and exits with code 130."))
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although settings that change the result differ from the checkpoint's (they are listed)")
    p.set_defaults(func=cmd_train)

    p = with_config(sub.add_parser("check-config", help="print the resolved config and exit",
                                   description="Print the config that `train` would use (defaults + file + overrides)."))
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("export", help="write a run's editor (or fake score) to one safetensors file",
                       description="Export trained weights that the ComfyUI nodes and `edit` load.")
    p.add_argument("run", help="run directory (uses its latest checkpoint) or a checkpoint file")
    p.add_argument("--out", "-o", required=True, help="output .safetensors path")
    p.add_argument("--role", choices=["editor", "fake"], default="editor",
                   help="editor: the trained editor (default); fake: the fake score, for the DMD critic")
    p.add_argument("--layout", choices=["npedit", "comfyui"], default="npedit",
                   help="npedit: for the NP-Edit nodes and `edit` (default); comfyui: for ComfyUI's own loaders, a LoRA "
                        "run as a LoRA for LoraLoaderModelOnly, a full fine-tune as a diffusion model for Load "
                        "Diffusion Model")
    p.set_defaults(func=cmd_export)

    p = with_config(sub.add_parser("edit", help="edit images from the command line",
                                   description="Edit images with a base model (config model.*) plus exported NP-Edit weights."))
    p.add_argument("--images", "-i", nargs="+", required=True, help="input image files")
    p.add_argument("--instruction", "-p", nargs="+", required=True,
                   help="one instruction for all images, or one per image (quote each)")
    p.add_argument("--editor", "-e", help="exported editor .safetensors (omit to run the base model alone)")
    p.add_argument("--mask", nargs="+", help="optional mask image per input (white = edit); outside it the input is kept")
    p.add_argument("--out", "-o", default="edits", help="output folder (default: edits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i (default 0)")
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("demo", help="the built-in demo: a short run on a CPU in minutes",
                       description="Train a tiny editor on built-in data (warm-up, then NP-Edit), export it and edit with it.")
    p.add_argument("--out", "-o", default="runs/demo", help="folder for the demo's runs and outputs (default runs/demo)")
    p.add_argument("--fresh", action="store_true", help="delete the demo's earlier runs in --out and train again")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("prepare-data", help="write a training manifest from a folder of photos or a public dataset",
                       description="Write a JSONL training manifest: from a folder of images with a local LLM/VLM "
                                   "(resumable: run again to continue), or from pico-banana-400k / GPT-Image-Edit-1.5M "
                                   "metadata (their target images are ignored). Skipped images and rows are listed.")
    p.add_argument("--out", "-o", required=True, help="output manifest (.jsonl); rejects go to <out>.rejects.jsonl")
    p.add_argument("--images", help="folder of reference images (searched recursively)")
    p.add_argument("--model", help="local transformers folder: a VLM (has preprocessor_config.json; sees the images) "
                                   "or a text-only LLM (needs a caption per image: <image>.txt or --captions)")
    p.add_argument("--mix", help="edit-type weights TYPE=W,...; default: remove 0.25, the other nine types 0.083 each")
    p.add_argument("--edits-per-image", type=int, default=1, help="samples written per image (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation length limit (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image category draw (default 0)")
    p.add_argument("--verify", action="store_true", help="ask the VLM whether each edit fits its image; drop the Nos")
    p.add_argument("--captions", help="JSONL of {\"image\", \"caption\"} source captions (for a text-only LLM)")
    p.add_argument("--retry-rejects", action="store_true", help="ask again about samples rejected by an earlier run")
    p.add_argument("--limit", type=int, help="stop after this many new samples (for a trial run)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16", help="model dtype (default bfloat16)")
    p.add_argument("--device", default="cpu", help="torch device of the model (default cpu; e.g. cuda)")
    p.add_argument("--dataset", choices=["pico-banana", "gpt-image-edit", "npedit-merged"],
                   help="convert a public dataset's metadata instead of generating")
    p.add_argument("--metadata", help="the dataset's metadata file (pico-banana sft.jsonl; GPT-Image-Edit training_json/*.json)")
    p.add_argument("--image-root", help="folder the dataset's source image paths are relative to")
    p.add_argument("--caption-fallback", choices=["instruction", "error"], default="instruction",
                   help="rows without an edited caption: use the instruction (default) or reject them")
    p.add_argument("--check-images", action="store_true", help="decode every source image while converting (slow)")
    p.set_defaults(func=cmd_prepare_data)

    p = with_config(sub.add_parser("eval", help="score editors on GEdit-Bench with a local VLM judge",
                                   description="GEdit-Bench (local copy), VIEScore-style SC / PQ / O from a local yes/no "
                                               "judge, per task type and overall, for our editor (config model.*, "
                                               "optional --editor weights) and diffusers pipelines at the same steps. "
                                               "Resumable: run again to continue."))
    p.add_argument("--bench", required=True, help="GEdit-Bench copy: a folder of its parquet files, or a metadata .jsonl/.json")
    p.add_argument("--out", "-o", default="eval", help="output folder (default eval): per editor images, scores.jsonl, results")
    p.add_argument("--editor", "-e", help="exported NP-Edit weights for our editor (omit: the base model)")
    p.add_argument("--name", default="npedit", help="name of our editor in the results (default npedit)")
    p.add_argument("--skip-ours", action="store_true", help="evaluate only the --pipeline editors")
    p.add_argument("--pipeline", action="append", metavar="FOLDER",
                   help="a local diffusers folder of another editor (FluxKontextPipeline, QwenImageEditPipeline, "
                        "QwenImageEditPlusPipeline, Flux2Pipeline, Flux2KleinPipeline); repeatable")
    p.add_argument("--pipeline-dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="dtype of the --pipeline editors (default bfloat16)")
    p.add_argument("--judge", help="local VLM folder for the judge (default: config judge.*)")
    p.add_argument("--judge-family", default="auto", help="judge family of --judge (default auto, from config.json)")
    p.add_argument("--steps", type=int, help="inference steps for every editor (default: config sampler.steps)")
    p.add_argument("--language", default="en", help="instruction language (default en: the 606 English samples; '' for all)")
    p.add_argument("--task-types", nargs="+", help="only these GEdit-Bench task types")
    p.add_argument("--limit", type=int, help="only the first N samples (a trial run)")
    p.add_argument("--max-area", type=int, default=1024 * 1024, help="largest working area in pixels (default 1048576)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample i uses seed + i (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu; e.g. cuda)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("convert", help="convert the published zimage_npedit_internvl.pt into an NP-Edit export",
                       description="Convert the NP-Edit re-implementation's Z-Image checkpoint (nupurkmr9/npedit) into "
                                   "an editor file that `edit --editor` and the nodes load on a Z-Image backbone.")
    p.add_argument("checkpoint", help="zimage_npedit_internvl.pt (or a re-implementation .pt / DCP step folder)")
    p.add_argument("--out", "-o", required=True, help="output .safetensors path")
    p.add_argument("--reference", help="Z-Image diffusers (or transformer/) folder to check against (default: built-in config)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="cast the weights (default: keep the file's)")
    p.add_argument("--layout", choices=["npedit", "comfyui"], default="npedit",
                   help="npedit: for `edit` and the pack's loaders (default); comfyui: a diffusion model for ComfyUI's "
                        "Load Diffusion Model (docs/comfyui.md, core nodes)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("comfyui-install", help="copy the shipped micro-world models and example into a ComfyUI",
                       description="Copy the micro-world teacher, judge and editors to COMFYUI/models/npedit/microworld/, "
                                   "its example scene to input/ and its example workflow to user/default/workflows/, "
                                   "so that the pack's menus list them and the micro-world workflow runs.")
    p.add_argument("comfyui", help="the ComfyUI folder (or the folder given to ComfyUI's --base-directory)")
    p.add_argument("--force", action="store_true", help="replace files that differ from the pack's")
    p.set_defaults(func=cmd_comfyui_install)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from npedit_core.errors import NPEditError

    try:
        return args.func(args)
    except NPEditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
