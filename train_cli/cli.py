"""`python -m train_cli`: train, edit, export, check-config and demo, over npedit_core.

Thin by design: parse arguments, call one core function, print one line per result. Every
NPEditError becomes a one-line message on stderr and exit code 2; nothing already trained is lost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG_HELP = "YAML config file (defaults, then this file, then the overrides)"
OVERRIDE_HELP = "config overrides as key.sub=value, e.g. train.steps=100 model.path=/models/klein"


def _config(args):
    from npedit_core.config import load_config

    return load_config(args.config, args.overrides)


def cmd_check_config(args) -> int:
    import yaml

    from npedit_core.config import to_dict

    print(yaml.safe_dump(to_dict(_config(args)), sort_keys=False), end="")
    return 0


def cmd_train(args) -> int:
    from npedit_core.trainer import run_training

    cfg = _config(args)
    run_dir = run_training(cfg)
    print(f"run directory: {run_dir}")
    return 0


def cmd_export(args) -> int:
    from npedit_core.export import export_checkpoint

    out = export_checkpoint(args.run, args.out, role=args.role, layout=args.layout)
    print(f"wrote {out}")
    return 0


def cmd_edit(args) -> int:
    from npedit_core.editing import edit_files

    written = edit_files(
        images=args.images, instructions=args.instruction, out_dir=args.out, editor=args.editor,
        config_path=args.config, overrides=args.overrides, seed=args.seed, masks=args.mask,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from npedit_core.demo import run_demo

    run_demo(args.out, overrides=args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train_cli", description="Train and run NP-Edit image editors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p):
        p.add_argument("--config", "-c", help=CONFIG_HELP)
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
        return p

    p = with_config(sub.add_parser("train", help="train an editor (train.stage=warmup or npedit)",
                                   description="Train an editor. Resumes from RUN_DIR/checkpoints/latest when it exists; "
                                               "Ctrl-C finishes the current step, saves and exits."))
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
                   help="npedit: for the NP-Edit nodes and `edit` (default); comfyui: a LoRA in the key layout of "
                        "ComfyUI's own LoRA loader for the base model (LoRA runs only)")
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
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    p.set_defaults(func=cmd_demo)
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
