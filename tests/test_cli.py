"""``python -m pcdms_core`` end to end on the tiny models."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pcdms_core.loading.checkpoints import convert_checkpoint

from helpers import CONFIGS, PARITY

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pcdms_core", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """The parity checkpoints converted to our safetensors (their configs travel in the metadata)."""
    out = tmp_path_factory.mktemp("models")
    return {name: convert_checkpoint(PARITY / "checkpoints" / f"{name}.pt", out / f"{name}.safetensors", config=CONFIGS[name])
            for name in CONFIGS}


def test_generate_paper_pipeline_writes_pngs(tmp_path, tiny_models):
    out = tmp_path / "result.png"
    coarse = tmp_path / "coarse.png"
    proc = run_cli(
        "generate", "--source", PARITY / "inputs/src_a.png",
        "--source-pose", PARITY / "inputs/pose_a.json", "--target-pose", PARITY / "inputs/pose_t1.json",
        "--prior", tiny_models["s1"], "--inpaint", tiny_models["s2_paper"], "--refine", tiny_models["s3"],
        "--clip", PARITY / "clip_vision", "--dino", PARITY / "dinov2", "--vae", PARITY / "vae",
        "--size", "64", "--prior-steps", "3", "--inpaint-steps", "3", "--refine-steps", "2",
        "--out", out, "--coarse-out", coarse, "--seed", "5",
    )
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    assert "refine: step 2/2" in proc.stderr
    img = Image.open(out)
    assert img.size == (176, 256) and img.mode == "RGB"  # back to the source's size by default
    assert Image.open(coarse).size == (176, 256)


def test_generate_demo_with_a_skeleton_image_and_square_output(tmp_path, tiny_models):
    out = tmp_path / "demo.png"
    proc = run_cli(
        "generate", "--source", PARITY / "inputs/src_b.png",
        "--source-pose", PARITY / "inputs/pose_b.txt", "--target-pose", PARITY / "inputs/pose_t2.png",
        "--inpaint", tiny_models["s2_demo"], "--dino", PARITY / "dinov2", "--vae", PARITY / "vae",
        "--size", "64", "--inpaint-steps", "2", "--num-images", "2", "--keep-square", "--quiet", "--out", out,
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(tmp_path.glob("demo_*.png"))
    assert [f.name for f in files] == ["demo_1.png", "demo_2.png"]
    assert Image.open(files[0]).size == (64, 64)


def test_convert_and_inspect(tmp_path):
    proc = run_cli("convert", PARITY / "checkpoints/s2_demo.pt", tmp_path / "demo.safetensors", "--config", CONFIGS["s2_demo"])
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("inspect", tmp_path / "demo.safetensors")  # the converted file carries its config
    assert proc.returncode == 0, proc.stderr
    assert "without the prior" in proc.stdout and "file metadata" in proc.stdout
    proc = run_cli("inspect", PARITY / "checkpoints/s1.pt", "--config", CONFIGS["s1"])
    assert proc.returncode == 0, proc.stderr
    assert "stage-1 prior" in proc.stdout and "2 blocks, width 16" in proc.stdout


def test_errors_are_one_clean_message(tmp_path, tiny_models):
    proc = run_cli(
        "generate", "--source", PARITY / "inputs/src_a.png",
        "--source-pose", PARITY / "inputs/pose_a.json", "--target-pose", PARITY / "inputs/pose_t1.json",
        "--inpaint", tiny_models["s3"], "--dino", PARITY / "dinov2", "--vae", PARITY / "vae", "--out", tmp_path / "x.png",
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "stage-3 refining" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_input_paths_are_checked_before_any_model_loads(tmp_path):
    """Each wrong input is one line and exit 2, found before the (here missing) models would be loaded."""
    ex = ROOT / "pcdms_core" / "demo_models" / "examples"
    src, sp, tp = ex / "pcdms_example_source.png", ex / "pcdms_example_source_pose.json", ex / "pcdms_example_target_pose.json"
    skeleton = ex / "pcdms_example_target_pose.png"
    models = ["--inpaint", tmp_path / "missing_s2.pt", "--dino", tmp_path / "d", "--vae", tmp_path / "v"]
    cases = [
        (["--source", tmp_path / "nope.png", "--source-pose", sp, "--target-pose", tp], "source image not found"),
        (["--source", tmp_path, "--source-pose", sp, "--target-pose", tp], "is a folder"),
        (["--source", ROOT / "README.md", "--source-pose", sp, "--target-pose", tp], "is not an image"),
        (["--source", src, "--source-pose", skeleton, "--target-pose", tp], "source pose .* is an image"),
        (["--source", src, "--source-pose", sp, "--target-pose", tmp_path / "t.json"], "target pose not found"),
        (["--source", src, "--source-pose", sp, "--target-pose", tp], "--inpaint model not found"),
        (["--source", src, "--source-pose", sp], "give --target-pose too"),
    ]
    for argv, message in cases:
        proc = run_cli("generate", *argv, *models, "--out", tmp_path / "x.png")
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.startswith("error: ") and re.search(message, proc.stderr), (message, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_skeleton_image_on_the_paper_path_says_what_to_give():
    ex = ROOT / "pcdms_core" / "demo_models" / "examples"
    proc = run_cli("generate", "--source", ex / "pcdms_example_source.png", "--source-pose",
                   ex / "pcdms_example_source_pose.json", "--target-pose", ex / "pcdms_example_target_pose.png",
                   "--out", "x.png")
    assert proc.returncode == 2 and "needs keypoints" in proc.stderr and "PCDMs_ckpt.pt" in proc.stderr


def test_inspect_describes_encoders_and_vaes_and_goes_on(tmp_path):
    demo = ROOT / "pcdms_core" / "demo_models"
    junk = tmp_path / "notes.txt"
    junk.write_text("not a model")
    proc = run_cli("inspect", demo / "vae" / "pcdms_demo_vae.safetensors", junk,
                   demo / "clip_vision" / "pcdms_demo_dinov2.safetensors",
                   demo / "clip_vision" / "pcdms_demo_clip.safetensors", demo / "pcdms" / "pcdms_demo_refine.safetensors")
    out = proc.stdout
    assert "VAE (AutoencoderKL)" in out and "--vae" in out
    assert "DINOv2 model" in out and "--dino" in out and "CLIP vision model" in out and "--clip" in out
    assert "stage-3 refining" in out  # the files after the failing one were described too
    assert proc.returncode == 2 and proc.stderr.count("error: ") == 1 and "notes.txt" in proc.stderr


def test_naming_the_demo_files_explicitly_uses_their_own_size_and_settings(tmp_path):
    """The bundled files bring their working size (64) and sampler settings, named or defaulted alike (a copy of
    one is recognised too)."""
    from PIL import Image

    from pcdms_core import bundled

    copy = tmp_path / "pcdms_demo_inpaint.safetensors"
    copy.write_bytes(bundled.demo_file("inpaint").read_bytes())
    files = {k: bundled.demo_file(k) for k in ("prior", "refine", "clip", "dino", "vae")}
    proc = run_cli("generate", "--inpaint", copy, *[a for k, f in files.items() for a in (f"--{k}", f)],
                   "--keep-square", "--quiet", "--out", tmp_path / "x.png")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "x.png").size == bundled.SIZE
    assert bundled.is_demo_file(copy) and not bundled.is_demo_file(ROOT / "README.md")
