"""A real ComfyUI for the tests (COMFYUI_PATH): where it is, which Python runs it, the tiny models it reads,
and a server started headless with --cpu on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from helpers import CONFIGS, PARITY

ROOT = Path(__file__).resolve().parents[1]
STUB_NODES = ROOT / "tests" / "comfyui" / "stub_nodes"
PACK_DIR_NAME = "ComfyUI-PCDMs"


def _python_of(base: Path) -> str | None:
    for cand in (base / "venv" / "bin" / "python", base / ".venv" / "bin" / "python",
                 base.parent / "python_embeded" / "python.exe"):
        if cand.exists():
            return str(cand)
    return None


def conventional_paths() -> list[Path]:
    """Where a ComfyUI checkout is looked for when COMFYUI_PATH is unset: the one scripts/setup_comfyui.sh makes
    (.comfyui in the repository), the ComfyUI this pack is installed in (ComfyUI/custom_nodes/<pack>), then
    ../ComfyUI beside the repository, ~/ComfyUI and /opt/ComfyUI."""
    return [ROOT / ".comfyui", ROOT.parents[1], ROOT.parent / "ComfyUI", Path.home() / "ComfyUI",
            Path("/opt/ComfyUI")]


def in_ci() -> bool:
    """CI=true: the real-ComfyUI tests must run, so what would skip them fails instead."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def find_comfyui() -> tuple[Path | None, str | None, str]:
    """(checkout, its Python, why not) for the real-ComfyUI tests."""
    explicit = os.environ.get("COMFYUI_PATH")
    if explicit:
        base = Path(explicit)
        if not (base / "main.py").exists():
            return None, None, f"COMFYUI_PATH={explicit} has no main.py"
        return base, os.environ.get("COMFYUI_PYTHON") or _python_of(base) or sys.executable, ""
    for base in conventional_paths():
        if (base / "main.py").exists() and (base / "comfy").is_dir():
            python = os.environ.get("COMFYUI_PYTHON") or _python_of(base)
            if python:
                return base, python, ""
            return None, None, f"found ComfyUI at {base} but not its Python: set COMFYUI_PYTHON (and COMFYUI_PATH)"
    return None, None, "COMFYUI_PATH is not set and no ComfyUI checkout was found at " + ", ".join(
        str(p) for p in conventional_paths())


def comfyui_path() -> Path | None:
    return find_comfyui()[0]


def comfyui_python() -> str:
    return find_comfyui()[1]


def pack_dir_name() -> str:
    """The pack's folder name in ComfyUI: its own when the repository is inside ComfyUI/custom_nodes."""
    base = comfyui_path()
    return ROOT.name if base is not None and ROOT.parent == base / "custom_nodes" else PACK_DIR_NAME


def ensure_requirements() -> None:
    """Install the pack's requirements into ComfyUI's environment the way ComfyUI-Manager does, if missing."""
    python = comfyui_python()
    if subprocess.run([python, "-c", "import diffusers, safetensors"], capture_output=True).returncode != 0:
        subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt")], check=True)


def write_models(base: Path) -> None:
    """The workflows' model file names, holding tiny models (configs beside them as <name>.json)."""
    pcdms = base / "models" / "pcdms"
    clip_vision = base / "models" / "clip_vision"
    vae_dir = base / "models" / "vae"
    for d in (pcdms, clip_vision, vae_dir):
        d.mkdir(parents=True, exist_ok=True)
    for fixture, name in [("s1", "s1_512"), ("s2_paper", "s2_512"), ("s3", "s3_512"), ("s2_demo", "PCDMs_ckpt")]:
        shutil.copy(PARITY / "checkpoints" / f"{fixture}.pt", pcdms / f"{name}.pt")
        shutil.copy(CONFIGS[fixture], pcdms / f"{name}.json")
    for folder, name in [("clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K"), ("dinov2", "dinov2-giant")]:
        shutil.copy(PARITY / folder / "model.safetensors", clip_vision / f"{name}.safetensors")
        shutil.copy(PARITY / folder / "config.json", clip_vision / f"{name}.json")
    write_random_sd_vae(vae_dir / "sd21-base-vae.safetensors")


def write_random_sd_vae(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from pcdms_core import diffusers_glue as _compat
    from pcdms_core.loading.vae import SD21_BASE_VAE

    torch.manual_seed(0)
    vae = _compat.AutoencoderKL(**_compat.accepted_kwargs(_compat.AutoencoderKL, SD21_BASE_VAE))
    save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(path))


def make_env(base: Path) -> Path:
    """The folder ComfyUI runs against: models, input, output, custom_nodes (our pack + the DWPose stand-in)."""
    write_models(base)
    nodes_dir = base / "custom_nodes"
    nodes_dir.mkdir()
    if pack_dir_name() == PACK_DIR_NAME:  # otherwise ComfyUI loads the pack from its own custom_nodes
        (nodes_dir / PACK_DIR_NAME).symlink_to(ROOT, target_is_directory=True)
    shutil.copytree(STUB_NODES / "dwpose_stub", nodes_dir / "dwpose_stub")
    for d in ("input", "output", "user"):
        (base / d).mkdir()
    (base / "extra_model_paths.yaml").write_text(
        "pcdms_tests:\n"
        f"  base_path: {base}\n"
        "  custom_nodes: custom_nodes\n"
        "  pcdms: models/pcdms\n"
        "  clip_vision: models/clip_vision\n"
        "  vae: models/vae\n"
    )
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / f"comfyui_{self.port}.log"
        cmd = [
            comfyui_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
            "--input-directory", str(base / "input"), "--output-directory", str(base / "output"),
            "--user-directory", str(base / "user"), "--preview-method", "auto",
            "--disable-all-custom-nodes", "--whitelist-custom-nodes", pack_dir_name(), "dwpose_stub",
        ]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfyui_path(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early; log: {self.log_path}\n{self.log_path.read_text()[-3000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start; log: {self.log_path}")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                data = r.read()
                return r.status, (json.loads(data) if data else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def queue(self, prompt: dict, client_id: str = "pcdms-tests") -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
        if status != 200:
            raise AssertionError(f"prompt refused ({status}): {json.dumps(body)[:2000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish; log: {self.log_path}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
