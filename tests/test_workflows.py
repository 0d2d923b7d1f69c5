"""The shipped workflows, checked without ComfyUI: valid UI-format JSON with a thumbnail, only known node
types, links whose types match the schemas, Notes naming the model files, and up to date with the builder."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import comfy_stub
from workflow_tools import (
    WORKFLOWS, check_workflow, load_workflows, node_rect, offline_object_info, overlapping_nodes, ui_to_api,
    workflow_files,
)

ROOT = Path(__file__).resolve().parents[1]
CORE_AND_AUX = {"LoadImage", "VAELoader", "SaveImage", "PreviewImage", "ImageScale", "ImageSharpen", "DWPreprocessor", "Note",
                "KSampler", "KSamplerAdvanced", "VAEDecode"}
BASE = {"pcdms_paper_three_stages", "pcdms_demo_checkpoint", "pcdms_dwpose_target_pose", "pcdms_stages_rewired",
        "pcdms_native_ksampler"}
EXPECTED = BASE | {name + "_demo_models" for name in BASE}


@pytest.fixture(scope="module")
def object_info(tmp_path_factory):
    modules = comfy_stub.install(tmp_path_factory.mktemp("comfy"))
    try:
        yield offline_object_info(comfy_stub.import_pack())
    finally:
        comfy_stub.uninstall(modules)


def test_every_workflow_and_its_demo_variant_exist_with_thumbnails():
    files = workflow_files()
    assert set(files) == EXPECTED
    for name, path in files.items():
        thumb = path.with_suffix(".jpg")
        assert thumb.exists(), f"{name} has no thumbnail"
        assert Image.open(thumb).format == "JPEG"


def test_templates_are_named_by_their_titles():
    """ComfyUI's template browser shows a custom-node template's file name as its title: the files carry titles
    (the demo variants marked), and their ids stay inside."""
    for name, path in workflow_files().items():
        title = path.stem
        assert title.startswith("PCDMs - ") and "_" not in title, title
        assert title.endswith(" (demo models)") == name.endswith("_demo_models"), (name, title)
        assert not set(title) & set('<>:"/\\|?*'), title  # a valid file name everywhere


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_workflow_is_sound(object_info, name):
    wf = load_workflows()[name]
    assert wf["version"] == 0.4 and wf["last_node_id"] == max(n["id"] for n in wf["nodes"])
    ours = {k for k in object_info if k.startswith("PCDMs")}
    types = {n["type"] for n in wf["nodes"]}
    assert types <= ours | CORE_AND_AUX, types - ours - CORE_AND_AUX
    assert check_workflow(wf, object_info) == []
    notes = " ".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "Note")
    prefix = "demo_models/" if name.endswith("_demo_models") else "models/"
    assert all(f"{prefix}{folder}/" in notes for folder in ("pcdms", "clip_vision", "vae")), notes


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nodes_do_not_overlap(object_info, name):
    """No node covers another (title bars included), and each is tall enough for its sockets and widgets."""
    wf = load_workflows()[name]
    assert overlapping_nodes(wf) == []
    for node in wf["nodes"]:
        info = object_info.get(node["type"])
        if info is None:
            continue
        widgets = len(node.get("widgets_values") or [])
        rows = max(len(node["inputs"]), len(node["outputs"]))
        assert node["size"][1] >= rows * 20 + widgets * 20, (name, node["type"], node["size"])


def test_overlap_check_sees_a_title_bar():
    below = {"id": 2, "pos": [0, 120], "size": [100, 50]}
    assert overlapping_nodes({"nodes": [{"id": 1, "pos": [0, 0], "size": [100, 100]}, below]}) == [(1, 2)]
    assert node_rect(below) == (0, 90, 100, 170)
    below["pos"] = [0, 131]
    assert overlapping_nodes({"nodes": [{"id": 1, "pos": [0, 0], "size": [100, 100]}, below]}) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nodes_say_which_package_they_come_from(name):
    """cnr_id (registry id) or aux_id on every node, as current ComfyUI saves workflows."""
    import tomllib

    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    for node in load_workflows()[name]["nodes"]:
        props = node["properties"]
        if node["type"] == "Note":
            continue
        if node["type"].startswith("PCDMs"):
            assert props["cnr_id"] == ours, node
        elif node["type"] == "DWPreprocessor":
            assert props["cnr_id"] == "comfyui_controlnet_aux", node
            assert props["aux_id"] == "Fannovel16/comfyui_controlnet_aux", node
        else:
            assert props["cnr_id"] == "comfy-core", node


def test_conversion_to_the_api_format(object_info):
    api = ui_to_api(load_workflows()["pcdms_paper_three_stages"], object_info)
    by_type = {}
    for node_id, node in api.items():
        by_type.setdefault(node["class_type"], []).append((node_id, node))
    assert "Note" not in by_type
    (inpaint_id, inpaint), = by_type["PCDMsInpaint"]
    assert inpaint["inputs"]["steps"] == 20 and inpaint["inputs"]["cfg"] == 2.0 and inpaint["inputs"]["seed"] == 42
    prior_id = by_type["PCDMsPrior"][0][0]
    assert inpaint["inputs"]["embedding"] == [prior_id, 0]
    refine = by_type["PCDMsRefine"][0][1]
    assert refine["inputs"]["image"] == [inpaint_id, 0] and refine["inputs"]["cfg_rescale"] == -1.0
    loaders = sorted(n["inputs"]["ckpt_name"] for _, n in by_type["PCDMsCheckpointLoader"])
    assert loaders == ["s1_512.pt", "s2_512.pt", "s3_512.pt"]
    assert by_type["LoadImage"][0][1]["inputs"] == {"image": "pcdms_example_source.png"}


def test_workflows_are_what_the_builder_writes(tmp_path):
    """scripts/build_workflows.py regenerates the shipped files byte for byte (nothing edited by hand)."""
    shipped = {p.name: p.read_bytes() for p in WORKFLOWS.glob("*.json")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_workflows.py"), str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.json")} == shipped


def test_example_inputs_are_shipped():
    names = set()
    for wf in load_workflows().values():
        for node in wf["nodes"]:
            if node["type"] in ("LoadImage", "PCDMsLoadPose"):
                names.add(node["widgets_values"][0])
    assert names and all((ROOT / "pcdms_core" / "demo_models" / "examples" / n).exists() for n in names), names
