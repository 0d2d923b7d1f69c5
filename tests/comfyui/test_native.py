"""The native path in a real ComfyUI: PCDMs stages 2 and 3 as MODELs under KSampler, core patches and ComfyUI's
model management (tests/comfyui/native_check.py does the work in ComfyUI's Python)."""

from __future__ import annotations

import json
import subprocess

import pytest

from comfy_server import ROOT, comfyui_path, comfyui_python


@pytest.fixture(scope="module")
def report(comfy_env):
    proc = subprocess.run([comfyui_python(), str(ROOT / "tests" / "comfyui" / "native_check.py"), str(comfy_env),
                           str(ROOT)], cwd=comfyui_path(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ksampler_euler_matches_the_faithful_euler_path(report):
    """KSampler (euler, ddim_uniform, our starting latents) gives the faithful path's latents with our euler
    scheduler: the same sigmas (the official leading timesteps), the same Euler step, the same CFG."""
    for kind in ("paper", "noprior", "refine"):
        assert report["equivalence"][kind] < 1e-4, (kind, report["equivalence"])


def test_ddim_differs_only_by_its_last_step(report):
    """ComfyUI's ddim is Euler on the same timesteps, so it follows the official DDIM until the last step, which
    officially ends at t = 0's noise level and in ComfyUI at zero noise: close, not equal."""
    for kind, value in report["ddim"].items():
        assert 1e-4 < value < 2e-2, (kind, value)


def test_other_samplers_and_freeu_run_on_each_stage(report):
    for kind in ("paper", "refine"):
        runs = report["samplers"][kind]
        for name in ("euler/normal", "dpmpp_2m/karras", "uni_pc/simple"):
            assert runs[name]["finite"] and runs[name]["std"] > 0, (kind, name, runs[name])
        assert runs["freeu"]["finite"] and runs["freeu"]["differs"] > 1e-3, (kind, runs["freeu"])


def test_model_patcher_sees_the_real_size(report):
    size = report["size"]
    assert size["parameters"] <= size["patcher"] <= size["parameters"] + 64 * 1024  # plus the sigma tables


def test_partial_load_gives_the_whole_load_result(report):
    part = report["partial"]
    assert part["cast_modules"] > 0 and part["loaded_bytes"] <= part["budget"]
    assert part["rel"] < 1e-5, part


@pytest.mark.parametrize("name, size", [("pcdms_native_ksampler", 32), ("pcdms_native_ksampler_demo_models", 64)])
def test_native_workflow_runs(server, object_info, name, size):
    """KSampler on PCDMs stages 2 and 3, from the shipped template: the official one on tiny models saved under the
    official names (at a small working size), the demo one as shipped."""
    from PIL import Image

    from workflow_tools import check_workflow, load_workflows, ui_to_api

    workflow = load_workflows()[name]
    assert check_workflow(workflow, object_info) == []
    prompt = ui_to_api(workflow, object_info)
    for node in prompt.values():
        if node["class_type"] == "PCDMsEncodeSource":
            node["inputs"].update(width=size, height=size)
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    saved = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert len(saved) == 1
    image = Image.open(server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"])
    assert image.size == (size, size)


def test_core_clip_vision_gives_our_loaders_features(report):
    """Encode Source takes Load CLIP Vision's models: PCDMs' preprocessing and forward on the same weights (shared
    where the dtype allows) in ComfyUI's dtype for encoders, so the features equal our loaders' (auto dtype)."""
    cv = report["clip_vision"]
    assert cv["tokens"] < 1e-5 and cv["clip"] < 1e-5, cv
    assert cv["node_tokens"] < 1e-5 and cv["node_clip"] < 1e-5, cv  # PCDMs Encode Source, either way
    if cv["dtype"] == cv["comfy_dtype"]:  # on a GPU; on a CPU ours compute in fp32 and ComfyUI stores fp16
        assert cv["shared"], "the encoder should use ComfyUI's tensors, not a copy"
    assert cv["shared_in_storage_dtype"], "in ComfyUI's dtype the encoder should use ComfyUI's tensors, not a copy"
    assert "is DINOv2" in cv["wrong_kind"] and "CLIP" in cv["wrong_kind"], cv["wrong_kind"]


def test_demo_models_sample_in_the_demo_vae_latent_space(report):
    """A native demo MODEL scales latents as the demo VAE does (so the LATENT holds that VAE's raw latents) and
    previews them with colours fitted to it."""
    demo = report["demo_latent"]
    assert abs(demo["scale"] - demo["vae_scale"]) < 1e-6 and abs(demo["scale"] - 0.18215) > 1e-3, demo
    assert demo["rgb_rows"] == 4, demo


def test_gpu_check_runs_the_native_ksampler(tmp_path):
    """benchmarks/gpu_check.py's native row (KSampler on stage 2) works where ComfyUI's code is importable, so the
    GPU check cannot rot; here on the CPU at the tiny size."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([comfyui_python(), str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--size",
                           "tiny", "--dtypes", "fp32", "--stages", "native", "--steps", "2", "--threads", "1",
                           "--comfyui", str(comfyui_path()), "--json", str(out)],
                          cwd=comfyui_path(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [r for r in json.loads(out.read_text())["rows"] if r["stage"] == "native"]
    assert len(rows) == 1 and rows[0]["finite"] is True and rows[0]["ours_ms"] > 0, rows


def test_native_bad_input_gets_one_clear_message(report):
    errors = report["errors"]
    assert "stage-1 prior" in errors["prior_file"] and "PCDMs Prior" in errors["prior_file"], errors
    assert "needs a stage-3" in errors["stage_mismatch"], errors
    assert "PCDMs Load Stage as MODEL" in errors["not_pcdms"], errors
    assert "scales its latents by 0.18215" in errors["vae_scale"] and "pcdms_demo_vae" in errors["vae_scale"], errors
    assert "connect the latent output" in errors["latent_size"], errors
    assert "PCDMs Refine Conditioning" in errors["no_pcdms_conditioning"], errors
    assert "made for a paper PCDMs model" in errors["other_model"] and "same MODEL" in errors["other_model"], errors
