"""benchmarks/gpu_check.py, run the way a CPU can: tiny size, fp32 and bf16, in a subprocess. Its table and its
JSON must name every stage, find every output finite and give positive timings; a NaN planted in a weight must
make it fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
MEASURED = ["vae_encode", "vae_decode", "clip", "dino", "prior", "inpaint", "refine"]
WITH_BARE = ["vae_encode", "vae_decode", "prior", "inpaint", "refine"]
FAST = ["--device", "cpu", "--size", "tiny", "--threads", "1", "--repeat", "2", "--warmup", "1", "--steps", "2"]


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_tiny_cpu_run_reports_every_stage(tmp_path):
    out_json = tmp_path / "gpu_check.json"
    done = run_check(*FAST, "--dtypes", "fp32,bf16", "--json", str(out_json))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out_json.read_text())
    assert data["ok"] is True
    assert {d["package"] for d in data["deps"] if d["ok"]} >= {"torch", "diffusers", "safetensors", "numpy", "pillow"}
    assert data["machine"]["torch"] and data["date"] and "gpu_check.py" in data["command"]
    rows = {(r["stage"], r["dtype"]): r for r in data["rows"]}
    for stage in MEASURED:
        for dtype in ("fp32", "bf16"):
            row = rows[(stage, dtype)]
            assert row["finite"] is True, row
            assert row["fp32_reference_finite"] is True, row
            assert row["ours_ms"] > 0 and row["weights_mib"] > 0, row
            assert row["peak_mib"] is None  # no GPU: no device memory figure
            if stage in WITH_BARE:
                assert row["bare_ms"] > 0 and row["ratio"] > 0, row
            else:
                assert row["bare_ms"] is None, row
        assert rows[(stage, "fp32")]["err_vs_fp32"] == 0.0  # the fp32 row is the reference itself
        assert 0 < rows[(stage, "bf16")]["err_vs_fp32"] < 0.1, rows[(stage, "bf16")]
    for dtype in ("fp32", "bf16"):
        path = rows[("path", dtype)]
        assert path["finite"] is True and path["total_s"] > 0, path
        assert set(path["sampler_step_ms"]) == {"prior", "inpaint", "refine"}, path
        assert all(v > 0 for v in path["sampler_step_ms"].values()), path
    assert rows[("native", "-")]["note"].startswith("skipped: needs ComfyUI source")

    # the printed table: header lines, the column names, one line per row with the verdict
    table = done.stdout[done.stdout.index("\nmachine: "):]
    for word in ("machine: ", "date: ", "command: ", "stage", "finite", "ours ms", "bare ms", "ratio", "peak MiB"):
        assert word in table
    lines = table.splitlines()
    for label in ("VAE encode", "VAE decode", "CLIP image encoder", "DINOv2 image encoder", "stage 1 prior",
                  "stage 2 UNet (paper)", "stage 3 UNet", "paper path, stage by stage"):
        for dtype in ("fp32", "bf16"):
            assert any(line.startswith(label) and f" {dtype} " in line and " True " in line for line in lines), label
    assert any(line.startswith("native KSampler") and "skipped" in line for line in lines)


def test_a_nan_weight_fails_the_check(tmp_path):
    out_json = tmp_path / "gpu_check.json"
    done = run_check(*FAST, "--dtypes", "fp32", "--stages", "prior,refine", "--poison", "refine",
                     "--json", str(out_json))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "NOT FINITE: stage 3 UNet fp32" in done.stdout
    rows = {r["stage"]: r for r in json.loads(out_json.read_text())["rows"]}
    assert rows["prior"]["finite"] is True and rows["refine"]["finite"] is False
    assert json.loads(out_json.read_text())["ok"] is False


def test_missing_packages_are_named_with_how_to_bring_them():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)  # its top level imports the standard library only
    text = gpu_check.how_to_bring(["diffusers"])
    assert "pip download" in text and "diffusers==" in text and "--wheels .whl" in text
    assert "--no-index --find-links .whl" in text
