"""Start a real ComfyUI server as a subprocess with this pack installed, and talk to it over HTTP (127.0.0.1 only).

Layout of one server (all under a temporary folder, so nothing is written into the ComfyUI tree):
    base/             --base-directory: ComfyUI's own models/, input/, temp/, user/ defaults
    custom_nodes/npedit -> the repository (a symlink: the pack exactly as checked out)
    models/           the tiny fixture models (tests/tiny_models.py)
    paths.yaml        --extra-model-paths-config: custom_nodes and every model folder key
    out/              --output-directory
    frontend/index.html  an empty front end (or `front_end`: the real one's static folder)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import urllib.error
import urllib.request

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "npedit"
MODEL_KEYS = ("diffusion_models", "text_encoders", "vae", "vae_approx", "loras", "npedit", "LLM")


class Response:
    """The status and body of one HTTP exchange (urllib, so the tests need no HTTP library)."""

    def __init__(self, status: int, body: bytes):
        self.status_code, self.content = status, body
        self.text = body.decode("utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self):
        return json.loads(self.text)


def http(method: str, url: str, payload=None, timeout: float = 30.0) -> Response:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return Response(reply.status, reply.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, err.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, tree: Path, python: Path, work: Path, models: Path, extra_args: tuple[str, ...] = (),
                 front_end: Path | None = None):
        self.tree, self.python, self.work, self.models = tree, python, work, models
        self.front_end = front_end  # a real front end's static folder; None: an empty page
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.input_dir = work / "base" / "input"
        self.output_dir = work / "out"
        self.log_path = work / "comfyui.log"
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 240.0) -> "ComfyServer":
        w = self.work
        for d in (w / "base" / "custom_nodes", self.input_dir, self.output_dir, w / "custom_nodes", w / "frontend"):
            d.mkdir(parents=True, exist_ok=True)
        (w / "frontend" / "index.html").write_text("<html><body>NP-Edit tests</body></html>")
        link = w / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        paths = {"npedit_tests": {"base_path": str(w), "custom_nodes": "custom_nodes/",
                                  **{key: str(self.models / key) for key in MODEL_KEYS}}}
        (w / "paths.yaml").write_text(yaml.safe_dump(paths))
        cmd = [str(self.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--front-end-root", str(self.front_end or w / "frontend"),
               "--base-directory", str(w / "base"), "--extra-model-paths-config", str(w / "paths.yaml"),
               "--output-directory", str(self.output_dir), "--database-url", "sqlite:///:memory:",
               "--disable-api-nodes", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env.pop("PYTHONPATH", None)  # the pack must work from its folder alone, as in a user's ComfyUI
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, cwd=self.tree, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if http("GET", f"{self.url}/system_stats", timeout=2).ok:
                    return self
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: ends the server and nothing else
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- HTTP ------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30.0) -> Response:
        return http("GET", f"{self.url}{path}", timeout=timeout)

    def object_info(self) -> dict:
        return self.get("/object_info").json()

    def submit(self, graph: dict) -> Response:
        """POST /prompt; the response is 200 with a prompt_id, or 400 with the validation errors."""
        return http("POST", f"{self.url}/prompt", {"prompt": graph, "client_id": self.client_id}, timeout=60)

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """The history entry of `prompt_id` once it has finished (successfully or not)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}").json()
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def run(self, graph: dict, timeout: float = 600.0) -> dict:
        response = self.submit(graph)
        assert response.status_code == 200, response.text[:3000]
        return self.wait(response.json()["prompt_id"], timeout)

    def running(self) -> list:
        return self.get("/queue").json().get("queue_running", [])

    def interrupt(self) -> None:
        assert http("POST", f"{self.url}/interrupt", {}).ok

    def output_path(self, image: dict) -> Path:
        """The file of an image entry from a history output ({"filename", "subfolder", "type"})."""
        base = self.output_dir if image["type"] == "output" else self.work / "base" / image["type"]
        return base / image.get("subfolder", "") / image["filename"]


def messages(entry: dict, kind: str) -> list[dict]:
    """The `kind` messages (execution_cached, execution_error, ...) of a history entry."""
    return [data for name, data in entry["status"].get("messages", []) if name == kind]


def dump(entry: dict) -> str:
    return json.dumps(entry.get("status", {}), indent=1)[:4000]
