"""ComfyUI workflow formats: the front end's UI format (workflows/*.json) and the API format (workflows/api/*.json).

The API copies are the source: compact graphs {id: {"class_type", "inputs"}} that the tests submit
to /prompt. The UI files (what users load, and what ComfyUI's template browser serves) are generated
from them with `api_to_ui`; `ui_to_api` converts back the way the front end does when it queues a
workflow, and the tests require ui_to_api(ui) == api for every workflow, against the pack's schemas
(tests/nodes, fake ComfyUI) and against the real server's /object_info (tests/comfyui).

Regenerate the UI files after changing an API copy or a node's inputs:
    python -m tests.workflow_format
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

#: /object_info of the ComfyUI 0.3.75 core nodes the example workflows use (the fields read here).
#: tests/comfyui checks these against the real server.
CORE_NODES = {
    "LoadImage": {"input": {"required": {"image": [[], {"image_upload": True}]}}, "input_order": {"required": ["image"]},
                  "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"]},
    "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
                  "input_order": {"required": ["images", "filename_prefix"]}, "output": [], "output_name": []},
    "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}}, "input_order": {"required": ["images"]},
                     "output": [], "output_name": []},
    "RepeatImageBatch": {"input": {"required": {"image": ["IMAGE"], "amount": ["INT", {"default": 1, "min": 1, "max": 4096}]}},
                         "input_order": {"required": ["image", "amount"]}, "output": ["IMAGE"], "output_name": ["IMAGE"]},
    "PrimitiveStringMultiline": {"input": {"required": {"value": ["STRING", {"multiline": True}]}},
                                 "input_order": {"required": ["value"]}, "output": ["STRING"], "output_name": ["STRING"]},
    # the core-nodes examples (a Z-Image editor on ComfyUI's own MODEL; best-of-N from a core Qwen-Image-Edit)
    "UNETLoader": {"input": {"required": {"unet_name": [[], {}], "weight_dtype": [[], {}]}},
                   "input_order": {"required": ["unet_name", "weight_dtype"]},
                   "output": ["MODEL"],
                   "output_name": ["MODEL"]},
    "CLIPLoader": {"input": {"required": {"clip_name": [[], {}], "type": [[], {}]}, "optional": {"device": [[], {}]}},
                   "input_order": {"required": ["clip_name", "type"], "optional": ["device"]},
                   "output": ["CLIP"],
                   "output_name": ["CLIP"]},
    "VAELoader": {"input": {"required": {"vae_name": [[], {}]}},
                  "input_order": {"required": ["vae_name"]},
                  "output": ["VAE"],
                  "output_name": ["VAE"]},
    "LoraLoaderModelOnly": {"input": {"required": {"model": ["MODEL", {}],
                                                   "lora_name": [[], {}],
                                                   "strength_model": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}]}},
                            "input_order": {"required": ["model", "lora_name", "strength_model"]},
                            "output": ["MODEL"],
                            "output_name": ["MODEL"]},
    "ImageScaleToTotalPixels": {"input": {"required": {"image": ["IMAGE", {}],
                                                       "upscale_method": ["COMBO", {}],
                                                       "megapixels": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}]}},
                                "input_order": {"required": ["image", "upscale_method", "megapixels"]},
                                "output": ["IMAGE"],
                                "output_name": ["IMAGE"]},
    "VAEEncode": {"input": {"required": {"pixels": ["IMAGE", {}], "vae": ["VAE", {}]}},
                  "input_order": {"required": ["pixels", "vae"]},
                  "output": ["LATENT"],
                  "output_name": ["LATENT"]},
    "VAEDecode": {"input": {"required": {"samples": ["LATENT", {}], "vae": ["VAE", {}]}},
                  "input_order": {"required": ["samples", "vae"]},
                  "output": ["IMAGE"],
                  "output_name": ["IMAGE"]},
    "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]}},
                       "input_order": {"required": ["text", "clip"]},
                       "output": ["CONDITIONING"],
                       "output_name": ["CONDITIONING"]},
    "SamplerCustom": {"input": {"required": {"model": ["MODEL", {}],
                                             "add_noise": ["BOOLEAN", {"default": True}],
                                             "noise_seed": ["INT",
                                                            {"control_after_generate": True,
                                                             "default": 0,
                                                             "min": 0,
                                                             "max": 18446744073709551615}],
                                             "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}],
                                             "positive": ["CONDITIONING", {}],
                                             "negative": ["CONDITIONING", {}],
                                             "sampler": ["SAMPLER", {}],
                                             "sigmas": ["SIGMAS", {}],
                                             "latent_image": ["LATENT", {}]}},
                      "input_order": {"required": ["model", "add_noise", "noise_seed", "cfg", "positive", "negative", "sampler",
                                                   "sigmas", "latent_image"]},
                      "output": ["LATENT", "LATENT"],
                      "output_name": ["output", "denoised_output"]},
    "TextEncodeQwenImageEdit": {"input": {"required": {"clip": ["CLIP", {}], "prompt": ["STRING", {"multiline": True}]},
                                          "optional": {"vae": ["VAE", {}], "image": ["IMAGE", {}]}},
                                "input_order": {"required": ["clip", "prompt"], "optional": ["vae", "image"]},
                                "output": ["CONDITIONING"],
                                "output_name": ["CONDITIONING"]},
    "RepeatLatentBatch": {"input": {"required": {"samples": ["LATENT", {}], "amount": ["INT", {"default": 1, "min": 1, "max": 64}]}},
                          "input_order": {"required": ["samples", "amount"]},
                          "output": ["LATENT"],
                          "output_name": ["LATENT"]},
    "ModelSamplingAuraFlow": {"input": {"required": {"model": ["MODEL", {}],
                                                     "shift": ["FLOAT", {"default": 1.73, "min": 0.0, "max": 100.0, "step": 0.01}]}},
                              "input_order": {"required": ["model", "shift"]},
                              "output": ["MODEL"],
                              "output_name": ["MODEL"]},
    "KSampler": {"input": {"required": {"model": ["MODEL", {}],
                                        "seed": ["INT",
                                                 {"control_after_generate": True,
                                                  "default": 0,
                                                  "min": 0,
                                                  "max": 18446744073709551615}],
                                        "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                                        "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}],
                                        "sampler_name": [[], {}],
                                        "scheduler": [[], {}],
                                        "positive": ["CONDITIONING", {}],
                                        "negative": ["CONDITIONING", {}],
                                        "latent_image": ["LATENT", {}],
                                        "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]}},
                 "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                                              "latent_image", "denoise"]},
                 "output": ["LATENT"],
                 "output_name": ["LATENT"]},
}


def _inputs(info: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) of every input in the node's order (required, then optional)."""
    out = []
    for group in ("required", "optional"):
        specs = info["input"].get(group, {})
        for name in info.get("input_order", {}).get(group, list(specs)):
            spec = specs[name]
            out.append((name, spec[0], spec[1] if len(spec) > 1 else {}))
    return out


def _is_widget(kind, options: dict) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def _extra_values(kind, options: dict) -> list:
    """Values the front end stores after a widget's own: a seed's control mode, an upload button's."""
    if kind in ("INT", "FLOAT") and options.get("control_after_generate"):
        return ["fixed"]
    if options.get("image_upload"):
        return ["image"]
    return []


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API graph the front end queues for a UI workflow (active nodes only)."""
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, kind, options in _inputs(info):
            if _is_widget(kind, options):
                inputs[name] = values.pop(0)
                del values[: len(_extra_values(kind, options))]
            if name in linked:
                link = linked[name]
                inputs[name] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def _depths(api: dict) -> dict[str, int]:
    """Column of each node: 0 for sources, else one more than its deepest input."""
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            parents = [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max(map(visit, parents)) if parents else 0
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


def api_to_ui(api: dict, object_info: dict) -> dict:
    """A UI workflow (litegraph format 0.4) for an API graph, laid out in columns by graph depth."""
    depth = _depths(api)
    links, rows = [], {}
    outputs: dict[str, list[list[int]]] = {i: [[] for _ in object_info[n["class_type"]]["output"]] for i, n in api.items()}
    nodes = []
    for order, node_id in enumerate(sorted(api, key=lambda i: (depth[i], int(i)))):
        node, info = api[node_id], object_info[api[node_id]["class_type"]]
        row = rows[depth[node_id]] = rows.get(depth[node_id], -1) + 1
        inputs, widgets = [], []
        for name, kind, options in _inputs(info):
            value = node["inputs"].get(name)
            link_id = None
            if isinstance(value, list):
                link_id = len(links) + 1
                source, slot = value
                links.append([link_id, int(source), slot, int(node_id), len(inputs), kind])
                outputs[source][slot].append(link_id)
            if _is_widget(kind, options):
                widgets += [value if link_id is None else options.get("default", ""), *_extra_values(kind, options)]
                if link_id is not None:
                    inputs.append({"name": name, "type": kind, "widget": {"name": name}, "link": link_id})
            else:
                entry = {"name": name, "type": kind, "link": link_id}
                if name in info["input"].get("optional", {}):
                    entry["shape"] = 7  # the front end's mark of an optional socket
                inputs.append(entry)
        nodes.append({
            "id": int(node_id), "type": node["class_type"], "pos": [40 + 420 * depth[node_id], 40 + 330 * row],
            "size": [380, 290], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [{"name": name, "type": kind, "links": None, "slot_index": slot}
                        for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        })
    for node in nodes:
        for slot, out in enumerate(node["outputs"]):
            out["links"] = outputs[str(node["id"])][slot] or None
    # Links refer to the input's slot among the node's listed inputs, as the front end saves them.
    return {"last_node_id": max(map(int, api)), "last_link_id": len(links), "nodes": sorted(nodes, key=lambda n: n["id"]),
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def pairs() -> list[tuple[Path, Path]]:
    """(UI file, API copy) for every example workflow."""
    return [(WORKFLOWS / p.name, p) for p in sorted((WORKFLOWS / "api").glob("*.json"))]


def pack_object_info() -> dict:
    """/object_info of the pack's nodes (through the fake ComfyUI) plus the core nodes above."""
    import asyncio
    import tempfile

    from tests.nodes import fake_comfy

    saved = fake_comfy.install(Path(tempfile.mkdtemp()))
    try:
        pack = fake_comfy.load_pack()
        nodes = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
        return {**CORE_NODES, **{info["name"]: info for info in map(fake_comfy.node_info, nodes)}}
    finally:
        fake_comfy.uninstall(saved)


if __name__ == "__main__":
    info = pack_object_info()
    for ui_path, api_path in pairs():
        ui_path.write_text(json.dumps(api_to_ui(load(api_path), info), indent=2) + "\n")
        print(f"wrote {ui_path.relative_to(ROOT)}")
