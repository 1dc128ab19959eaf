"""One real ComfyUI server for the whole tier, with the pack and the tiny fixture models.

The ComfyUI tree and its venv come from `comfyui_env` (cached; NPEDIT_COMFYUI_DIR / NPEDIT_COMFYUI_PYTHON
override). If neither a download nor NPEDIT_COMFYUI_DIR gives a ComfyUI, the tier is skipped with the
reason; any other failure (the server does not start, the pack does not load) is a test failure.
"""

from __future__ import annotations

import pytest
from PIL import Image

from tests.comfyui.comfyui_env import Unavailable, comfyui_python, comfyui_tree
from tests.comfyui.server import ComfyServer

PHOTO = "npedit_chelsea.png"
PHOTO_SIZE = (67, 45)  # (width, height): odd on purpose, not a multiple of the backbones' 16 pixels


@pytest.fixture(scope="session")
def comfyui():
    """(tree, python) of a ComfyUI that can run the pack."""
    try:
        tree = comfyui_tree()
        return tree, comfyui_python(tree)
    except Unavailable as err:
        pytest.skip(f"no ComfyUI for the integration tier: {err}")


@pytest.fixture(scope="session")
def server(comfyui, tiny_models, tmp_path_factory, photos):
    tree, python = comfyui
    models, _ = tiny_models
    # Previews on (ComfyUI's default is none), so the sampler's per-step previews can be checked.
    srv = ComfyServer(tree, python, tmp_path_factory.mktemp("comfyui-server"), models,
                      extra_args=("--preview-method", "auto"))
    srv.start()
    try:
        chelsea = photos("chelsea")[0].permute(1, 2, 0).numpy()
        Image.fromarray((chelsea * 255).round().astype("uint8")).resize(PHOTO_SIZE, Image.LANCZOS).save(
            srv.input_dir / PHOTO)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def object_info(server):
    return server.object_info()
