"""The library as a package: ``pip wheel .`` builds a wheel holding ``pcdms_core`` with the bundled demo models and
example inputs, and that wheel alone, installed apart from this checkout, runs the README's generate command
from another folder."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pcdms_core
from pcdms_core import bundled

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(out), *isolation],
                          capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list(out.glob("pcdms-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_the_library_the_demo_models_and_the_examples_only(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"pcdms_core/demo_models/{f}" for f in bundled.FILES.values()}
    shipped |= {f"pcdms_core/demo_models/{f}" for f in bundled.EXAMPLES.values()}
    assert shipped <= names, shipped - names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pcdms_core").rglob("*.py")}
    assert modules <= names, modules - names
    # the ComfyUI pack around the library is not part of it
    assert not any(n.startswith(("nodes/", "tests/", "workflows/", "scripts/")) or n == "__init__.py" for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert f"Version: {pcdms_core.__version__}" in text
    assert "Requires-Dist: torch" not in text  # users bring the torch build that fits their machine


def test_the_installed_wheel_generates_from_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))  # this checkout is not on the path
    proc = subprocess.run([sys.executable, "-c", "import pcdms_core, sys; print(pcdms_core.__file__)"],
                          capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith(str(site)), proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pcdms_core", "generate", "--out", "result.png", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=elsewhere, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    assert Image.open(elsewhere / "result.png").size == Image.open(bundled.example_file("source")).size
