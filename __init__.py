"""ComfyUI entry point of the NP-Edit node pack.

ComfyUI imports this folder as a custom node package; this file registers the nodes (V3 API,
`comfy_entrypoint`) and the front-end script in `nodes/web/` (`WEB_DIRECTORY`) when ComfyUI is importable,
and does nothing else. The maths lives in `npedit_core/`, the node adapters in `nodes/`.
"""

WEB_DIRECTORY = "./nodes/web"  # shows the scorer's, critic's and Refine's reports on the node

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI >= 0.3.47)
except ImportError:
    pass
else:
    from .nodes import comfy_entrypoint  # noqa: F401
