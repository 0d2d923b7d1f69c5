"""CI runs the real-ComfyUI tests: scripts/setup_comfyui.sh reports a missing ComfyUI snapshot with its own exit
status, and tests/comfyui skips without a ComfyUI on a developer's machine but stops the run under CI=true."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_script_says_when_there_is_no_snapshot(tmp_path):
    env = dict(os.environ, COMFYUI_TARBALL=str(tmp_path / "absent.tar.gz"), COMFYUI_DIR=str(tmp_path / "comfy"))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup_comfyui.sh")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 3 and proc.stdout == ""
    assert "absent.tar.gz does not exist" in proc.stderr
    assert not (tmp_path / "comfy").exists()


def _collect(tmp_path, **env):
    env = {**os.environ, "COMFYUI_PATH": str(tmp_path / "no-comfyui"), **env}
    env.pop("COMFYUI_PYTHON", None)
    return subprocess.run([sys.executable, "-m", "pytest", "tests/comfyui", "-q", "-k", "object_info", "-p",
                           "no:cacheprovider"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_without_comfyui_the_tests_skip_with_the_reason(tmp_path):
    proc = _collect(tmp_path, CI="false")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "real-ComfyUI tests skipped" in proc.stdout and "no-comfyui has no main.py" in proc.stdout


def test_under_ci_a_missing_comfyui_fails(tmp_path):
    proc = _collect(tmp_path, CI="true")
    assert proc.returncode != 0
    assert "CI=true but the real-ComfyUI tests cannot run" in proc.stdout + proc.stderr


def test_ci_runs_the_readme_commands():
    """.ci/run and the README's Tests section name the same commands."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Tests"):]
    section = section[:section.index("\n## ", 1)]
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("pip install torch==2.13.0 && pip install -r requirements-dev.txt", "scripts/setup_comfyui.sh",
                    "python -m pytest"):
        assert command in ci and command in section, command
