"""The pack loaded against the fake ComfyUI modules, with tiny models in a ComfyUI-style models folder."""

from __future__ import annotations

import asyncio

import pytest

from tests.nodes import fake_comfy


@pytest.fixture(scope="session")
def models_dir(tiny_models):
    return tiny_models


@pytest.fixture(scope="session")
def pack(models_dir):
    """The imported pack (module `npedit_pack`), its nodes registered through `comfy_entrypoint`."""
    saved = fake_comfy.install(models_dir[0])
    try:
        module = fake_comfy.load_pack()
        module.extension = asyncio.run(module.comfy_entrypoint())
        module.node_list = asyncio.run(module.extension.get_node_list())
        yield module
    finally:
        fake_comfy.uninstall(saved)


@pytest.fixture()
def state():
    fake_comfy.STATE.reset()
    yield fake_comfy.STATE
    fake_comfy.STATE.reset()
    fake_comfy.cli_args.args.preview_method = fake_comfy.LatentPreviewMethod.NoPreviews
