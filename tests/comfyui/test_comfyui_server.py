"""The pack in a real ComfyUI, started headless with --cpu on loopback (COMFYUI_PATH)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from comfy_server import in_ci, pack_dir_name
from workflow_tools import check_workflow, load_workflows, ui_to_api, workflow_files

OUR_NODES = {
    "PCDMsCheckpointLoader", "PCDMsCLIPVisionLoader", "PCDMsDINOv2Loader", "PCDMsVAELoader", "PCDMsLoadPose",
    "PCDMsSelectPerson", "PCDMsAlignPose", "PCDMsRenderPose", "PCDMsEncodeSource", "PCDMsPrior", "PCDMsInpaint",
    "PCDMsRefine", "PCDMsAllStages",
}
# The workflows' working size is 512 (official); here 128 keeps the full-size VAE quick on a CPU.
TEST_SIZE = 128


def test_object_info_lists_every_node_with_tooltips(object_info):
    assert OUR_NODES <= set(object_info)
    for name in OUR_NODES:
        node = object_info[name]
        assert node["python_module"].endswith(pack_dir_name())
        assert node["description"] and node["display_name"].startswith("PCDMs")
        for part in ("required", "optional"):
            for inp, spec in node["input"].get(part, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{inp} has no tooltip"


def test_model_folder_lists_the_extra_path(server):
    assert "s2_512.pt" in server.get("/models/pcdms")


def _api(workflow: dict, object_info: dict, shrink: bool = True) -> dict:
    prompt = ui_to_api(workflow, object_info)
    for node in prompt.values():
        if shrink and node["class_type"] == "PCDMsEncodeSource":
            node["inputs"].update(width=TEST_SIZE, height=TEST_SIZE)
    return prompt


def _saved_images(server, entry: dict) -> list[Image.Image]:
    out = []
    for node_out in entry["outputs"].values():
        for img in node_out.get("images", []):
            if img["type"] == "output":
                out.append(Image.open(server.base / "output" / img["subfolder"] / img["filename"]))
    return out


SHIPPED = [
    ("pcdms_paper_three_stages", (TEST_SIZE, TEST_SIZE)),
    ("pcdms_demo_checkpoint", (TEST_SIZE, TEST_SIZE)),
    ("pcdms_dwpose_target_pose", (TEST_SIZE, TEST_SIZE)),
    ("pcdms_stages_rewired", (768, 768)),
]


DEMO_SIZE = (64, 64)  # the demo models' working size, as the demo variants ship


@pytest.mark.parametrize("name, size", SHIPPED + [(n + "_demo_models", DEMO_SIZE if s == (TEST_SIZE, TEST_SIZE) else s)
                                                  for n, s in SHIPPED])
def test_shipped_workflow_runs(server, object_info, name, size):
    """The official-model workflows run on tiny models saved under the official file names; the demo-model
    variants run as shipped, on the bundled demo models."""
    workflow = load_workflows()[name]
    assert check_workflow(workflow, object_info) == []  # against the live schemas, file lists included
    entry = server.wait(server.queue(_api(workflow, object_info, shrink=not name.endswith("_demo_models"))))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    images = _saved_images(server, entry)
    assert len(images) == 1 and images[0].size == size


class Messages:
    """The websocket messages of one client, collected on a thread."""

    def __init__(self, server):
        import websocket  # websocket-client

        self.client_id = str(uuid.uuid4())
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={self.client_id}", timeout=5)
        self.items: list[tuple[float, dict]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import websocket

        while True:
            try:
                msg = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:
                return
            if isinstance(msg, str) and msg:
                self.items.append((time.time(), json.loads(msg)))

    def of_type(self, kind: str) -> list[tuple[float, dict]]:
        return [(t, m["data"]) for t, m in list(self.items) if m["type"] == kind]

    def close(self):
        self.ws.close()


def test_interrupt_stops_a_stage_within_one_step(server, object_info):
    workflow = load_workflows()["pcdms_demo_checkpoint"]
    prompt = _api(workflow, object_info)
    inpaint_id = next(k for k, v in prompt.items() if v["class_type"] == "PCDMsInpaint")
    prompt[inpaint_id]["inputs"].update(steps=400, seed=123)
    msgs = Messages(server)
    try:
        status, body = server.post("/prompt", {"prompt": prompt, "client_id": msgs.client_id})
        assert status == 200, body
        deadline = time.time() + 300
        while time.time() < deadline:
            steps = [d for _, d in msgs.of_type("progress") if d.get("node") == inpaint_id]
            if steps and steps[-1]["value"] >= 3:
                break
            time.sleep(0.05)
        assert steps, "no progress from the inpaint node"
        sent_at = time.time()
        value_when_sent = steps[-1]["value"]
        server.post("/interrupt", {})
        deadline = time.time() + 120
        while time.time() < deadline and not msgs.of_type("execution_interrupted"):
            time.sleep(0.05)
        interrupted = msgs.of_type("execution_interrupted")
        assert interrupted and interrupted[0][1]["node_id"] == inpaint_id
        after = [d["value"] for t, d in msgs.of_type("progress") if d.get("node") == inpaint_id and t > sent_at]
        assert max(after, default=value_when_sent) <= value_when_sent + 2  # the step in flight, then it stops
        assert max(after, default=value_when_sent) < 400
    finally:
        msgs.close()


def _error_message(server, prompt: dict) -> str:
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    return errors[0]["exception_message"]


def _paper_prompt(server, object_info) -> dict:
    return _api(load_workflows()["pcdms_paper_three_stages"], object_info)


def _node(prompt, class_type, title=None):
    for node_id, node in prompt.items():
        if node["class_type"] == class_type and (title is None or node["_meta"]["title"] == title):
            return node_id, node
    raise KeyError(class_type)


def test_bad_input_gives_actionable_messages(server, object_info):
    # a pose with nobody in it
    (server.base / "input" / "nobody.json").write_text(json.dumps([{"people": [], "canvas_width": 64, "canvas_height": 64}]))
    prompt = _paper_prompt(server, object_info)
    _, target = _node(prompt, "PCDMsLoadPose", "Target pose")
    target["inputs"]["pose_file"] = "nobody.json"
    assert "nobody" in _error_message(server, prompt)

    # a loader given another stage's file
    prompt = _paper_prompt(server, object_info)
    _, loader = _node(prompt, "PCDMsCheckpointLoader", "Stage 2: inpainting")
    loader["inputs"]["ckpt_name"] = "s1_512.pt"
    msg = _error_message(server, prompt)
    assert "PCDMs Inpaint got 's1_512.pt', which is a stage-1 prior checkpoint" in msg

    # a working size the UNet cannot take
    prompt = _paper_prompt(server, object_info)
    _, enc = _node(prompt, "PCDMsEncodeSource")
    enc["inputs"].update(width=68, height=64)
    assert "68x64 is not usable" in _error_message(server, prompt)


def _refused(server, prompt: dict) -> dict:
    """The node errors of a prompt ComfyUI refuses at queue time."""
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": "pcdms-tests"})
    assert status == 400, body
    return body["node_errors"]


def test_missing_model_files_are_all_named_at_queue_time(server, object_info):
    """Several loaders with absent files: one refusal, each loader's error naming its file and its folder, once."""
    prompt = _api(load_workflows()["pcdms_paper_three_stages_demo_models"], object_info, shrink=False)
    missing = {
        _node(prompt, "PCDMsCheckpointLoader", "Stage 1: prior")[0]: ("ckpt_name", "gone_prior.safetensors", "models/pcdms"),
        _node(prompt, "PCDMsCheckpointLoader", "Stage 3: refining")[0]: ("ckpt_name", "gone_refine.pt", "models/pcdms"),
        _node(prompt, "PCDMsCLIPVisionLoader")[0]: ("encoder_name", "gone_clip.safetensors", "models/clip_vision"),
        _node(prompt, "PCDMsDINOv2Loader")[0]: ("encoder_name", "gone_dino.safetensors", "models/clip_vision"),
        _node(prompt, "PCDMsVAELoader")[0]: ("vae_name", "gone_vae.safetensors", "models/vae"),
    }
    for node_id, (name, value, _) in missing.items():
        prompt[node_id]["inputs"][name] = value
    errors = _refused(server, prompt)
    assert set(errors) == set(missing), errors
    for node_id, (name, value, folder) in missing.items():
        (error,) = errors[node_id]["errors"]
        assert f"'{value}' was not found in {folder}" in error["details"], error
        assert "not in list" not in json.dumps(error)


def test_missing_pose_file_is_reported_once(server, object_info):
    prompt = _paper_prompt(server, object_info)
    target_id, target = _node(prompt, "PCDMsLoadPose", "Target pose")
    target["inputs"]["pose_file"] = "absent_pose.json"
    errors = _refused(server, prompt)
    assert list(errors) == [target_id]
    (error,) = errors[target_id]["errors"]
    assert "absent_pose.json" in error["details"] and "input folder" in error["details"]


def _combo_options(spec: list) -> list:
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def test_demo_models_stay_out_of_core_lists(object_info):
    """The bundled demo encoders and VAE are listed by our loaders only; core Load VAE and Load CLIP Vision,
    which cannot build them, do not offer them."""
    core_vae = _combo_options(object_info["VAELoader"]["input"]["required"]["vae_name"])
    core_clip = _combo_options(object_info["CLIPVisionLoader"]["input"]["required"]["clip_name"])
    assert "sd21-base-vae.safetensors" in core_vae and "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in core_clip
    assert not [f for f in core_vae + core_clip if "pcdms_demo" in f]
    ours = {name: _combo_options(spec) for name, spec in (
        ("vae", object_info["PCDMsVAELoader"]["input"]["required"]["vae_name"]),
        ("clip", object_info["PCDMsCLIPVisionLoader"]["input"]["required"]["encoder_name"]),
        ("dino", object_info["PCDMsDINOv2Loader"]["input"]["required"]["encoder_name"]),
        ("pcdms", object_info["PCDMsCheckpointLoader"]["input"]["required"]["ckpt_name"]))}
    assert "pcdms_demo_vae.safetensors" in ours["vae"] and "sd21-base-vae.safetensors" in ours["vae"]
    assert {"pcdms_demo_clip.safetensors", "pcdms_demo_dinov2.safetensors"} <= set(ours["clip"]) & set(ours["dino"])
    assert {"pcdms_demo_prior.safetensors", "s1_512.pt"} <= set(ours["pcdms"])


def test_model_management_and_comfy_vae(comfy_env):
    """ComfyUI's model management holds our models and frees them when the next stage needs the memory;
    ComfyUI's own VAE gives the diffusers VAE's numbers, so the stages may use Load VAE."""
    import subprocess

    from comfy_server import ROOT, comfyui_path, comfyui_python

    proc = subprocess.run([comfyui_python(), str(ROOT / "tests" / "comfyui" / "mm_check.py"), str(comfy_env), str(ROOT)],
                          cwd=comfyui_path(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["after_loading"] == []  # loaders only load to the offload device
    assert report["after_encode"] == ["ImageEncoder", "ImageEncoder"]  # CLIP and DINOv2
    assert "PriorTransformer" in report["after_prior"]
    assert report["after_next_stage_needs_the_memory"] == []
    assert report["prior_device_after_free"] == "cpu"
    assert "InpaintModel" in report["after_inpaint"] and "PriorTransformer" not in report["after_inpaint"]
    assert any("VAE" in name or "Autoencoder" in name for name in report["after_inpaint"])
    assert report["vae_encode_max_abs"] <= 1e-4 * max(1.0, report["vae_encode_scale"])
    assert report["vae_decode_u8_max_levels"] <= 1


def test_previews_follow_the_demo_vae_colours(comfy_env):
    """The stages' latent previews for the bundled demo VAE track what that VAE decodes (a photo and flat
    colours the fitted preview never saw), where SD 1.5's preview colours do not."""
    import subprocess

    from comfy_server import ROOT, comfyui_path, comfyui_python

    proc = subprocess.run([comfyui_python(), str(ROOT / "tests" / "comfyui" / "preview_check.py"), str(comfy_env),
                           str(ROOT)], cwd=comfyui_path(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    ours, sd15 = report["ours"], report["sd15"]  # errors in 8-bit levels, one per image
    assert max(ours["colours"]) < 36 and max(ours["cells"]) < 25, report  # a linear map: close, not exact
    assert sum(ours["colours"]) * 4 < sum(sd15["colours"]) and sum(ours["cells"]) * 3 < sum(sd15["cells"]), report


def test_installs_the_way_comfyui_manager_does(tmp_path):
    """``pip install -r requirements.txt`` into ComfyUI's environment changes no torch package and breaks no
    import (a dry run against the registry, then the imports ComfyUI and the pack need)."""
    import subprocess

    from comfy_server import ROOT, comfyui_python

    report = tmp_path / "report.json"
    proc = subprocess.run([comfyui_python(), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                           "-r", str(ROOT / "requirements.txt")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    changes = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert not changes & {"torch", "torchvision", "torchaudio", "numpy", "transformers", "huggingface-hub"}, changes
    code = "import torch, torchvision, transformers, huggingface_hub, diffusers, safetensors; print(torch.__version__)"
    proc = subprocess.run([comfyui_python(), "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _skip_or_fail(reason: str) -> None:
    """Skipped on a developer's machine; under CI=true a missing tool fails the test."""
    if in_ci():
        pytest.fail("CI=true: " + reason)
    pytest.skip(reason)


def test_real_frontend_loads_every_workflow_and_runs_two(server):
    """ComfyUI's frontend in headless Chromium: every workflow from the template route loads with no missing
    node type, two of them run from the frontend, the template browser lists the pack. Screenshots go to the test
    output folder."""
    import os
    import shutil
    import subprocess

    from comfy_server import ROOT

    node, npm = shutil.which("node"), shutil.which("npm")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    node_modules = os.environ.get("PLAYWRIGHT_NODE_MODULES") or str(ROOT / "tests" / "comfyui" / "node_modules")
    if not (node and chromium):
        _skip_or_fail("the frontend test needs node and chromium (apt-get install chromium; see README, Tests)")
    if not os.path.isdir(os.path.join(node_modules, "playwright-core")):
        if not npm:
            _skip_or_fail("the frontend test needs playwright-core (npm i playwright-core)")
        subprocess.run([npm, "install", "--no-save", "--prefix", str(Path(node_modules).parent), "playwright-core@1"],
                       check=True, capture_output=True, timeout=600)
    out = Path(os.environ.get("PCDMS_TEST_OUTPUT", ROOT / "test-output")) / "frontend"
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.stem for p in workflow_files().values())  # as the template route knows them: by title
    env = dict(os.environ, CHROMIUM=chromium, NODE_PATH=node_modules)
    script = ROOT / "tests" / "comfyui" / "frontend.mjs"
    # ES modules resolve from the script's folder: run a copy placed beside node_modules.
    runner = Path(node_modules).parent / "frontend.mjs"
    if runner != script:
        shutil.copy(script, runner)
    # Run from the frontend: the README's screenshot and the native path; the API tests run every workflow.
    run = {"PCDMs - paper, three stages (demo models)", "PCDMs - native, KSampler on stages 2 and 3"}
    assert run <= set(names)
    args = [("+" if n in run else "") + n for n in names]
    proc = subprocess.run([node, str(runner), server.url, pack_dir_name(), str(out), *args], capture_output=True,
                          text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"frontend screenshots: {out}")
    for name in names:
        wf = result["workflows"][name]
        assert wf["missing"] == [], (name, wf)
        assert wf["status"] == ("success" if name in run else "loaded"), (name, wf)
    assert sorted(result["templates"][pack_dir_name()]) == names and all(n.startswith("PCDMs - ") for n in names)
    assert result["templateDialogMentionsPack"]
    assert (out / "template_browser.png").exists()
