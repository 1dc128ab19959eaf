"""ComfyUI entry point of the NP-Edit node pack.

ComfyUI imports this folder as a custom node package; this file registers the nodes (V3 API,
`comfy_entrypoint`) when ComfyUI is importable, and does nothing else. The maths lives in
`npedit_core/`, the node adapters in `nodes/`.
"""

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI >= 0.3.47)
except ImportError:
    pass
else:
    from .nodes import comfy_entrypoint  # noqa: F401
