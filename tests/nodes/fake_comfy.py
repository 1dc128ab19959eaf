"""A small fake of the ComfyUI 0.3.75 modules the pack imports, for fast node-contract tests.

Faked: `comfy_api.latest` (io, ui, ComfyExtension), `comfy.model_management`, `comfy.utils`,
`comfy.cli_args`, `folder_paths`, and what the core-sampling nodes use of `comfy.samplers` (KSAMPLER),
`comfy.patcher_extension` and `comfy.ldm.common_dit`. Constructors take exactly the keyword arguments of 0.3.75
(`comfy_api/latest/_io.py`), so a misspelt or newer-only argument fails here as it would in ComfyUI;
`node_info(cls)` renders a schema the way /object_info does (V1 layout), which the workflow tests use.
The real-ComfyUI tier (tests/comfyui) checks the same contracts against the real modules.

`STATE` records what the pack asked of ComfyUI: progress updates, device moves, cache emptying, and
lets a test request an interrupt after n progress checks.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
PACK = "npedit_pack"  # the name the pack is imported under here (ComfyUI uses the folder's path)


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.progress: list[tuple[int, int, Any]] = []
        self.checks = 0
        self.interrupt_after: int | None = None
        self.emptied = 0
        self.freed: list[int] = []


STATE = State()


# --- comfy_api.latest.io ------------------------------------------------------------------------------
def _prune(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class Input:
    io_type = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}

    def as_dict(self) -> dict:
        return _prune({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                       "lazy": self.lazy}) | _prune(self.extra_dict)


class WidgetInput(Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, socketless=None,
                 widget_type=None, force_input=None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def as_dict(self):
        return super().as_dict() | _prune({"default": self.default, "socketless": self.socketless,
                                           "widgetType": self.widget_type, "forceInput": self.force_input})


class Output:
    io_type = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _type(io_type: str, input_cls=Input):
    """A ComfyType class with nested Input/Output bound to `io_type` (what @comfytype does)."""
    inp = type("Input", (input_cls,), {"io_type": io_type})
    out = type("Output", (Output,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": inp, "Output": out})


class _IntInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate

    def as_dict(self):
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step,
                                           "control_after_generate": self.control_after_generate})


class _FloatInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round

    def as_dict(self):
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step, "round": self.round})


class _StringInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                 placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline, self.placeholder = multiline, placeholder

    def as_dict(self):
        return super().as_dict() | _prune({"multiline": self.multiline, "placeholder": self.placeholder})


class _BooleanInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, label_on=None,
                 label_off=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)


class _ComboInput(WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options = options

    def as_dict(self):
        return super().as_dict() | _prune({"multiselect": False, "options": self.options})


class ComfyNode:
    @classmethod
    def define_schema(cls):
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        ids = [i.id for i in self.inputs or []] + [o.id for o in self.outputs or [] if o.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError(f"{self.node_id}: input/output ids are not unique: {ids}")


@dataclass
class NodeOutput:
    args: tuple = ()
    ui: Any = None

    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args, self.ui = args, ui


def Custom(io_type: str):
    return _type(io_type)


io = types.ModuleType("comfy_api.latest.io")
io.ComfyNode, io.Schema, io.NodeOutput, io.Custom = ComfyNode, Schema, NodeOutput, Custom
io.Input, io.WidgetInput, io.Output = Input, WidgetInput, Output
io.Image, io.Mask, io.Latent = _type("IMAGE"), _type("MASK"), _type("LATENT")
io.Int, io.Float, io.String = _type("INT", _IntInput), _type("FLOAT", _FloatInput), _type("STRING", _StringInput)
io.Boolean, io.Combo = _type("BOOLEAN", _BooleanInput), _type("COMBO", _ComboInput)
io.Model, io.Sigmas, io.Sampler = _type("MODEL"), _type("SIGMAS"), _type("SAMPLER")
io.Conditioning, io.Vae = _type("CONDITIONING"), _type("VAE")


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self):
        return {"text": (self.value,)}


ui = types.ModuleType("comfy_api.latest.ui")
ui.PreviewText = PreviewText


class ComfyExtension:
    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list:
        raise NotImplementedError


def node_info(cls) -> dict:
    """/object_info's entry for a node class (V1 layout: input.required/optional, input_order, output...)."""
    schema = cls.define_schema()
    schema.validate()
    inputs: dict = {"required": {}}
    for i in schema.inputs or []:
        d = i.as_dict()
        d.pop("optional", None)
        inputs.setdefault("optional" if i.optional else "required", {})[i.id] = (
            i.options if isinstance(i, _ComboInput) else i.io_type, d)
    outputs = schema.outputs or []
    return {
        "input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
        "output": [o.io_type for o in outputs], "output_is_list": [o.is_output_list for o in outputs],
        "output_name": [o.display_name or o.io_type for o in outputs], "name": schema.node_id,
        "display_name": schema.display_name, "description": schema.description, "category": schema.category,
        "output_node": schema.is_output_node,
    }


# --- comfy.* ------------------------------------------------------------------------------------------
class InterruptProcessingException(Exception):
    pass


mm = types.ModuleType("comfy.model_management")
mm.InterruptProcessingException = InterruptProcessingException
mm.get_torch_device = lambda: torch.device("cpu")
mm.unet_offload_device = lambda: torch.device("cpu")
mm.intermediate_device = lambda: torch.device("cpu")


def _soft_empty_cache(force=False):
    STATE.emptied += 1


def _free_memory(memory_required, device, keep_loaded=[]):  # noqa: B006 (ComfyUI's signature)
    STATE.freed.append(memory_required)


def _throw_if_interrupted():
    STATE.checks += 1
    if STATE.interrupt_after is not None and STATE.checks > STATE.interrupt_after:
        raise InterruptProcessingException()


mm.soft_empty_cache, mm.free_memory = _soft_empty_cache, _free_memory
mm.throw_exception_if_processing_interrupted = _throw_if_interrupted


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        self.current = value
        STATE.progress.append((value, total if total is not None else self.total, preview))

    def update(self, value):
        self.update_absolute(self.current + value)


utils = types.ModuleType("comfy.utils")
utils.ProgressBar = ProgressBar


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


cli_args = types.ModuleType("comfy.cli_args")
cli_args.LatentPreviewMethod = LatentPreviewMethod
cli_args.args = types.SimpleNamespace(preview_method=LatentPreviewMethod.NoPreviews, preview_size=512)


# --- folder_paths -----------------------------------------------------------------------------------
def make_folder_paths(models_dir: Path) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    exts = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    fp.folder_names_and_paths = {
        name: ([str(models_dir / name)], exts)
        for name in ("diffusion_models", "text_encoders", "vae", "vae_approx", "loras")
    }
    fp.folder_names_and_paths["diffusers"] = ([str(models_dir / "diffusers")], ["folder"])

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        if folder_name in fp.folder_names_and_paths:
            paths = fp.folder_names_and_paths[folder_name][0]
            if full_folder_path not in paths:
                paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
        else:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

    def get_folder_paths(folder_name):
        return fp.folder_names_and_paths[folder_name][0][:]

    def get_filename_list(folder_name):
        paths, extensions = fp.folder_names_and_paths[folder_name]
        found = set()
        for root in paths:
            for path, _, names in os.walk(root, followlinks=True):
                for name in names:
                    if not extensions or os.path.splitext(name)[1].lower() in extensions:
                        found.add(os.path.relpath(os.path.join(path, name), root).replace(os.sep, "/"))
        return sorted(found)

    def get_full_path(folder_name, filename):
        for root in fp.folder_names_and_paths[folder_name][0]:
            path = os.path.join(root, filename)
            if os.path.isfile(path):
                return path
        return None

    fp.add_model_folder_path, fp.get_folder_paths = add_model_folder_path, get_folder_paths
    fp.get_filename_list, fp.get_full_path = get_filename_list, get_full_path
    return fp


# --- comfy.samplers, comfy.patcher_extension, comfy.ldm.common_dit (what nodes/core_sampling.py uses) ----------
class KSAMPLER:
    def __init__(self, sampler_function, extra_options={}, inpaint_options={}):  # noqa: B006 (0.3.75's signature)
        self.sampler_function, self.extra_options, self.inpaint_options = sampler_function, extra_options, inpaint_options


samplers = types.ModuleType("comfy.samplers")
samplers.KSAMPLER = KSAMPLER
patcher_extension = types.ModuleType("comfy.patcher_extension")
patcher_extension.WrappersMP = types.SimpleNamespace(DIFFUSION_MODEL="diffusion_model")
ldm = types.ModuleType("comfy.ldm")
common_dit = types.ModuleType("comfy.ldm.common_dit")


def pad_to_patch_size(img, patch_size=(2, 2), padding_mode="circular"):
    pad = [(patch_size[i] - img.shape[-(2 - i)] % patch_size[i]) % patch_size[i] for i in range(2)]
    return torch.nn.functional.pad(img, (0, pad[1], 0, pad[0]), mode=padding_mode)


common_dit.pad_to_patch_size = pad_to_patch_size
ldm.common_dit = common_dit


# --- installing -------------------------------------------------------------------------------------
FAKED = ("comfy_api", "comfy_api.latest", "comfy", "comfy.model_management", "comfy.utils", "comfy.cli_args",
         "folder_paths", "comfy.samplers", "comfy.patcher_extension", "comfy.ldm", "comfy.ldm.common_dit")


def install(models_dir: Path) -> dict:
    """Put the fakes into sys.modules; returns what they replaced (for `uninstall`)."""
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ui, latest.ComfyExtension = io, ui, ComfyExtension
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.latest = latest
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils, comfy.cli_args = mm, utils, cli_args
    comfy.samplers, comfy.patcher_extension, comfy.ldm = samplers, patcher_extension, ldm
    modules = dict(zip(FAKED, (comfy_api, latest, comfy, mm, utils, cli_args, make_folder_paths(models_dir), samplers,
                               patcher_extension, ldm, common_dit)))
    saved = {name: sys.modules.get(name) for name in FAKED}
    sys.modules.update(modules)
    return saved


def uninstall(saved: dict) -> None:
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    for name in [n for n in sys.modules if n == PACK or n.startswith(PACK + ".")]:
        del sys.modules[name]


def load_pack():
    """Import the repository as ComfyUI does: a package loaded from the folder's __init__.py."""
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module
