"""Write the example workflows in workflows/ (ComfyUI UI format) and their .jpg thumbnails.

    python scripts/build_workflows.py [OUT_DIR]

Each workflow is described below as nodes, widget values by name and links by output/input name; widget
order and types come from the nodes' schemas (ours through the test stand-ins, core and controlnet_aux
ones from tests/fixtures/core_node_schemas.json), so the files stay consistent with the code.
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import comfy_stub  # noqa: E402
from workflow_tools import (  # noqa: E402
    WORKFLOWS, check_workflow, is_widget, offline_object_info, ordered_inputs, takes_control_value, widget_inputs,
)

from dataclasses import dataclass  # noqa: E402

from pcdms_core import bundled as demo_models  # noqa: E402

EXAMPLES = demo_models.DEMO_DIR / "examples"


@dataclass(frozen=True)
class Models:
    """Which model files a workflow names, and what goes with them."""

    suffix: str
    prior: str
    inpaint: str
    refine: str
    noprior: str  # the stage-2 model without a prior (official: the released PCDMs_ckpt.pt)
    clip: str
    dino: str
    vae: str
    vae_node: str  # ComfyUI's Load VAE for the SD VAE; ours for the small demo VAE it cannot build
    size: int
    note: str
    noprior_note: str
    inpaint_sampler: dict  # the PCDMsInpaint / PCDMsRefine widgets: steps, cfg, scheduler
    refine_sampler: dict
    noprior_sampler: dict


OFFICIAL_NOTE = (
    "Model files (nothing is downloaded; put them here, then press R):\n"
    "models/pcdms/\n"
    "  s1_512.pt  stage-1 prior\n"
    "  s2_512.pt  stage-2 inpainting (paper)\n"
    "  s3_512.pt  stage-3 refining\n"
    "  (official Google Drive folder 1W6rfMVPC6WIkVwAcNrm-LXAD3qxOhmK7; or our converted .safetensors)\n"
    "models/clip_vision/\n"
    "  CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors  (h94/IP-Adapter models/image_encoder/model.safetensors)\n"
    "  dinov2-giant.safetensors  (facebook/dinov2-giant model.safetensors, renamed)\n"
    "models/vae/\n"
    "  sd21-base-vae.safetensors  (stabilityai/stable-diffusion-2-1-base vae/diffusion_pytorch_model.safetensors)\n"
    "The same workflow with the bundled demo models: its (demo models) variant."
)
DEMO_MODELS_NOTE = (
    "Runs on the pack's bundled demo models (trained on synthetic people; nothing to download), which the\n"
    "loaders list from the pack's own folders:\n"
    "pcdms_core/demo_models/pcdms/  pcdms_demo_prior, pcdms_demo_inpaint, pcdms_demo_inpaint_noprior, pcdms_demo_refine\n"
    "pcdms_core/demo_models/clip_vision/  pcdms_demo_clip, pcdms_demo_dinov2\n"
    "pcdms_core/demo_models/vae/  pcdms_demo_vae (load it with PCDMs VAE Loader)\n"
    "They are small and work at 64 x 64: expect a rough picture of the person in the new pose.\n"
    "Sampler settings suited to them (an ancestral sampler) are preset; the official models use the official ones.\n"
    "For real photos use the official models: the same workflow without (demo models) names them."
)
OFFICIAL = Models(
    suffix="", prior="s1_512.pt", inpaint="s2_512.pt", refine="s3_512.pt", noprior="PCDMs_ckpt.pt",
    clip="CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", dino="dinov2-giant.safetensors",
    vae="sd21-base-vae.safetensors", vae_node="VAELoader", size=512, note=OFFICIAL_NOTE,
    noprior_note=(
        "The released no-prior checkpoint PCDMs_ckpt.pt (stage 2 only):\n"
        "models/pcdms/PCDMs_ckpt.pt  (official Google Drive folder 1hnPm-GzaAtQKjgG_glhlQZieJ5g5Xd-y)\n"
        "models/clip_vision/dinov2-giant.safetensors  (facebook/dinov2-giant)\n"
        "models/vae/sd21-base-vae.safetensors  (stabilityai/stable-diffusion-2-1-base vae)\n\n"
        "The target pose is a skeleton image here (like the official demo's pose PNGs); keypoints work too.\n"
        "Official settings: DDIM (scheduler auto), 50 steps, cfg 2."),
    inpaint_sampler=dict(steps=20, cfg=2.0, scheduler="auto"),
    refine_sampler=dict(steps=20, cfg=1.0, scheduler="unipc", strength=1.0),
    noprior_sampler=dict(steps=50, cfg=2.0, scheduler="auto"),
)


def _widgets(settings: dict) -> dict:
    widgets = dict(steps=settings["steps"], cfg=float(settings["guidance_scale"]), scheduler=settings["scheduler"])
    if "strength" in settings:  # stage 3 only
        widgets["strength"] = float(settings["strength"])
    return widgets


DEMO = Models(
    suffix="_demo_models", prior="pcdms_demo_prior.safetensors", inpaint="pcdms_demo_inpaint.safetensors",
    refine="pcdms_demo_refine.safetensors", noprior="pcdms_demo_inpaint_noprior.safetensors",
    clip="pcdms_demo_clip.safetensors", dino="pcdms_demo_dinov2.safetensors", vae="pcdms_demo_vae.safetensors",
    vae_node="PCDMsVAELoader", size=64, note=DEMO_MODELS_NOTE,
    noprior_note=DEMO_MODELS_NOTE + "\nStage 2 without a prior (like the released PCDMs_ckpt.pt), target pose as a "
                                    "skeleton image.",
    inpaint_sampler=_widgets(demo_models.SAMPLING["inpaint"]), refine_sampler=_widgets(demo_models.SAMPLING["refine"]),
    noprior_sampler=_widgets(demo_models.SAMPLING["inpaint"]),
)
INPUTS = {
    "source": "pcdms_example_source.png",
    "source_pose": "pcdms_example_source_pose.json",
    "target_pose": "pcdms_example_target_pose.json",
    "target_pose_image": "pcdms_example_target_pose.png",
    "pose_photo": "pcdms_example_pose_photo.png",
}
SIZES = {"Note": (400, 330), "LoadImage": (300, 330), "SaveImage": (330, 380), "PreviewImage": (300, 280)}
WIDTH = 320
SLOT, WIDGET = 20, 24  # the frontend's height of an input/output row and of a widget row (with its margin)
TITLE, GAP = 30, 30  # a node's title bar sits above its pos; the space left between two nodes of a column


def _registry_ids() -> dict:
    """The node properties current ComfyUI writes to say which package a node comes from."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        "ours": {"cnr_id": project["name"], "ver": project["version"]},
        "core": {"cnr_id": "comfy-core", "ver": "0.3.64"},
        "aux": {"cnr_id": "comfyui_controlnet_aux", "aux_id": "Fannovel16/comfyui_controlnet_aux"},
    }


REGISTRY = _registry_ids()
AUX_NODES = {"DWPreprocessor"}


def origin(type_: str) -> dict:
    if type_.startswith("PCDMs"):
        return REGISTRY["ours"]
    return REGISTRY["aux"] if type_ in AUX_NODES else REGISTRY["core"]


class Graph:
    def __init__(self, object_info: dict, models: Models):
        self.info = object_info
        self.models = models
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def node(self, type_: str, col: int, row: int, title: str | None = None, **widgets) -> dict:
        node = {"id": len(self.nodes) + 1, "type": type_, "pos": [40 + col * 440, 40 + row * 190],
                "size": list(SIZES.get(type_, (WIDTH, 0))), "flags": {}, "order": 0, "mode": 0,
                "inputs": [], "outputs": [], "properties": {**origin(type_), "Node name for S&R": type_}}
        if title:
            node["title"] = title
        if type_ == "Note":
            node.update(color="#432", bgcolor="#653", properties={}, widgets_values=[widgets["text"]])
            self.nodes.append(node)
            return node
        info = self.info[type_]
        for name, spec, optional in ordered_inputs(info):
            if not is_widget(spec):
                socket = {"name": name, "type": spec[0], "link": None}
                if optional:
                    socket["shape"] = 7
                node["inputs"].append(socket)
        for slot, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"])):
            node["outputs"].append({"name": out_name, "type": out_type, "links": [], "slot_index": slot})
        values = []
        for name, spec in widget_inputs(info):
            default = spec[1].get("default") if len(spec) > 1 else None
            if default is None and isinstance(spec[0], list):
                default = spec[0][0]
            values.append(widgets.pop(name, default))
            if takes_control_value(spec):
                values.append("fixed")
        if type_ == "LoadImage":
            values.append("image")  # the frontend's upload widget
        if widgets:
            raise KeyError(f"{type_} has no widgets {sorted(widgets)}")
        node["widgets_values"] = values
        if not node["size"][1]:  # tall enough for its sockets and widgets, as the frontend draws them
            rows = max(len(node["inputs"]), len(node["outputs"]))
            node["size"][1] = rows * SLOT + len(widget_inputs(info)) * WIDGET + 16
        self.nodes.append(node)
        return node

    def link(self, src: dict, output: str, dst: dict, input_: str) -> None:
        out_slot = next(i for i, o in enumerate(src["outputs"]) if o["name"] == output)
        in_slot = next(i for i, s in enumerate(dst["inputs"]) if s["name"] == input_)
        link_id = len(self.links) + 1
        out_type = src["outputs"][out_slot]["type"]
        self.links.append([link_id, src["id"], out_slot, dst["id"], in_slot, out_type])
        src["outputs"][out_slot]["links"].append(link_id)
        dst["inputs"][in_slot]["link"] = link_id

    def stack(self) -> None:
        """Each column top to bottom in the order of the requested rows, every node below the one above it
        (its title bar included) so that no node hides another's widgets."""
        columns: dict[int, list[dict]] = {}
        for n in self.nodes:
            columns.setdefault(n["pos"][0], []).append(n)
        for column in columns.values():
            bottom = None
            for n in sorted(column, key=lambda n: n["pos"][1]):
                if bottom is not None:
                    n["pos"][1] = max(n["pos"][1], bottom + GAP + TITLE)
                bottom = n["pos"][1] + n["size"][1]

    def to_json(self) -> dict:
        self.stack()
        # execution order: a node after everything it reads from
        deps = {n["id"]: {l[1] for l in self.links if l[3] == n["id"]} for n in self.nodes}
        order, done = [], set()
        while len(order) < len(self.nodes):
            for n in self.nodes:
                if n["id"] not in done and deps[n["id"]] <= done:
                    order.append(n["id"])
                    done.add(n["id"])
        for n in self.nodes:
            n["order"] = order.index(n["id"])
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps([n["type"] for n in self.nodes]))),
            "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.7, "offset": [0, 0]}}, "version": 0.4,
        }


def _loaders(g: Graph, prior=True, refine=True, noprior=False):
    m = g.models
    out = {}
    if prior:
        out["clip"] = g.node("PCDMsCLIPVisionLoader", 1, 0, encoder_name=m.clip)
        out["prior"] = g.node("PCDMsCheckpointLoader", 1, 3, title="Stage 1: prior", ckpt_name=m.prior)
    out["dino"] = g.node("PCDMsDINOv2Loader", 1, 1, encoder_name=m.dino)
    out["vae"] = g.node(m.vae_node, 1, 2, vae_name=m.vae)
    out["vae_out"] = "VAE" if m.vae_node == "VAELoader" else "vae"
    out["inpaint"] = g.node("PCDMsCheckpointLoader", 1, 4, title="Stage 2: inpainting",
                            ckpt_name=m.noprior if noprior else m.inpaint)
    if refine:
        out["refine"] = g.node("PCDMsCheckpointLoader", 1, 5, title="Stage 3: refining", ckpt_name=m.refine)
    return out


def _three_stages(g: Graph, src_img, src_pose, tgt_pose, between=None, seed=42):
    """Encode -> prior -> inpaint -> (between) -> refine. Poses are (node, output name); ``between`` is
    (first node, last node, last node's output) of a chain placed between inpainting and refining."""
    m = _loaders(g)
    enc = g.node("PCDMsEncodeSource", 2, 0, width=g.models.size, height=g.models.size)
    g.link(src_img, "IMAGE", enc, "image")
    g.link(m["dino"], "dino", enc, "dino")
    g.link(m["clip"], "clip", enc, "clip")
    prior = g.node("PCDMsPrior", 2, 2, seed=seed, steps=20, cfg=1.0, scheduler="unclip")
    g.link(m["prior"], "model", prior, "model")
    g.link(enc, "source", prior, "source")
    g.link(*src_pose, prior, "source_pose")
    g.link(*tgt_pose, prior, "target_pose")
    inpaint = g.node("PCDMsInpaint", 3, 0, seed=seed, batch_size=1, **g.models.inpaint_sampler)
    g.link(m["inpaint"], "model", inpaint, "model")
    g.link(m["vae"], m["vae_out"], inpaint, "vae")
    g.link(enc, "source", inpaint, "source")
    g.link(prior, "embedding", inpaint, "embedding")
    g.link(*src_pose, inpaint, "source_pose")
    g.link(*tgt_pose, inpaint, "target_pose")
    coarse_preview = g.node("PreviewImage", 4, 0, title="Stage 2: coarse target")
    g.link(inpaint, "image", coarse_preview, "images")
    refine = g.node("PCDMsRefine", 4, 2, seed=seed, cfg_rescale=-1.0, **g.models.refine_sampler)
    g.link(m["refine"], "model", refine, "model")
    g.link(m["vae"], m["vae_out"], refine, "vae")
    g.link(enc, "source", refine, "source")
    if between is None:
        g.link(inpaint, "image", refine, "image")
    else:
        first, last, out_name = between
        g.link(inpaint, "image", first, "image")
        g.link(last, out_name, refine, "image")
    return refine


def paper(g: Graph) -> dict:
    g.node("Note", 0, 0, title="PCDMs: models", text=g.models.note + "\nThe three stages of the paper: prior -> inpainting -> refining.")
    src = g.node("LoadImage", 0, 2, title="Source person", image=INPUTS["source"])
    sp = g.node("PCDMsLoadPose", 0, 4, title="Source pose", pose_file=INPUTS["source_pose"])
    tp = g.node("PCDMsLoadPose", 0, 5, title="Target pose", pose_file=INPUTS["target_pose"])
    refine = _three_stages(g, src, (sp, "pose_keypoint"), (tp, "pose_keypoint"))
    save = g.node("SaveImage", 5, 0, filename_prefix="PCDMs/paper")
    g.link(refine, "image", save, "images")
    return g.to_json()


def demo(g: Graph) -> dict:
    g.node("Note", 0, 0, title="PCDMs stage 2 without a prior", text=g.models.noprior_note)
    src = g.node("LoadImage", 0, 2, title="Source person", image=INPUTS["source"])
    sp = g.node("PCDMsLoadPose", 0, 4, title="Source pose", pose_file=INPUTS["source_pose"])
    tp = g.node("LoadImage", 0, 5, title="Target pose (skeleton image)", image=INPUTS["target_pose_image"])
    m = _loaders(g, prior=False, refine=False, noprior=True)
    enc = g.node("PCDMsEncodeSource", 2, 0, width=g.models.size, height=g.models.size)
    g.link(src, "IMAGE", enc, "image")
    g.link(m["dino"], "dino", enc, "dino")
    inpaint = g.node("PCDMsInpaint", 3, 0, seed=42, batch_size=1, **g.models.noprior_sampler)
    g.link(m["inpaint"], "model", inpaint, "model")
    g.link(m["vae"], m["vae_out"], inpaint, "vae")
    g.link(enc, "source", inpaint, "source")
    g.link(sp, "pose_keypoint", inpaint, "source_pose")
    g.link(tp, "IMAGE", inpaint, "target_pose_image")
    save = g.node("SaveImage", 4, 0, filename_prefix="PCDMs/demo")
    g.link(inpaint, "image", save, "images")
    return g.to_json()


def dwpose(g: Graph) -> dict:
    g.node("Note", 0, 0, title="PCDMs with DWPose", text=g.models.note + (
        "\nNeeds comfyui_controlnet_aux (DWPose Estimator), which fetches its own detector weights. The target pose "
        "is detected on a photo of anyone and moved onto the source body (PCDMs Align Pose)."))
    src = g.node("LoadImage", 0, 2, title="Source person", image=INPUTS["source"])
    photo = g.node("LoadImage", 0, 4, title="Photo with the wanted pose", image=INPUTS["pose_photo"])
    dw_src = g.node("DWPreprocessor", 1, 6, title="Source pose (DWPose)", detect_face="disable")
    dw_tgt = g.node("DWPreprocessor", 1, 7, title="Target pose (DWPose)", detect_face="disable")
    g.link(src, "IMAGE", dw_src, "image")
    g.link(photo, "IMAGE", dw_tgt, "image")
    align = g.node("PCDMsAlignPose", 2, 4, scale=True, center=True)
    g.link(dw_tgt, "POSE_KEYPOINT", align, "target_pose")
    g.link(dw_src, "POSE_KEYPOINT", align, "source_pose")
    preview = g.node("PreviewImage", 2, 6, title="Detected target pose")
    g.link(dw_tgt, "IMAGE", preview, "images")
    refine = _three_stages(g, src, (dw_src, "POSE_KEYPOINT"), (align, "pose_keypoint"))
    save = g.node("SaveImage", 5, 0, filename_prefix="PCDMs/dwpose")
    g.link(refine, "image", save, "images")
    return g.to_json()


def rewired(g: Graph) -> dict:
    g.node("Note", 0, 0, title="PCDMs stages rewired", text=g.models.note + (
        "\nThe stages are separate nodes: here a core Image Sharpen sits between inpainting and refining, and a "
        "core Upscale Image enlarges the result to 768 x 768."))
    src = g.node("LoadImage", 0, 2, title="Source person", image=INPUTS["source"])
    sp = g.node("PCDMsLoadPose", 0, 4, title="Source pose", pose_file=INPUTS["source_pose"])
    tp = g.node("PCDMsLoadPose", 0, 5, title="Target pose", pose_file=INPUTS["target_pose"])
    sharpen = g.node("ImageSharpen", 3, 3, sharpen_radius=1, sigma=1.0, alpha=0.5)
    refine = _three_stages(g, src, (sp, "pose_keypoint"), (tp, "pose_keypoint"), between=(sharpen, sharpen, "IMAGE"))
    scale = g.node("ImageScale", 5, 2, upscale_method="bicubic", width=768, height=768, crop="disabled")
    g.link(refine, "image", scale, "image")
    save = g.node("SaveImage", 5, 0, filename_prefix="PCDMs/rewired")
    g.link(scale, "IMAGE", save, "images")
    return g.to_json()


BUILDERS = {
    "pcdms_paper_three_stages": paper,
    "pcdms_demo_checkpoint": demo,
    "pcdms_dwpose_target_pose": dwpose,
    "pcdms_stages_rewired": rewired,
}
# The template titles: ComfyUI's template browser shows a custom-node template's file name as its title, so the
# files are named by them. Each file also records its template id (``extra.pcdms_template``), which the tests use.
TITLES = {
    "pcdms_paper_three_stages": "PCDMs - paper, three stages",
    "pcdms_demo_checkpoint": "PCDMs - released checkpoint, stage 2 only",
    "pcdms_dwpose_target_pose": "PCDMs - poses from photos with DWPose",
    "pcdms_stages_rewired": "PCDMs - stages rewired with core nodes",
}
DEMO_TITLE_SUFFIX = " (demo models)"


def file_title(name: str, models: Models) -> str:
    """The file name (without .json) of template ``name`` for ``models``: its title."""
    return TITLES[name] + (DEMO_TITLE_SUFFIX if models.suffix else "")


_RESULT: list = []


def example_result():
    """What the demo models make of the example inputs through the three stages (computed once per build): the
    picture on the template cards. The official-model cards show it too, labelled as the demo models' result."""
    if not _RESULT:
        from PIL import Image

        from pcdms_core import PCDMsPipeline, StageSettings, load_pose
        from pcdms_core.bundled import SAMPLING, SIZE, demo_file, example_file

        pipe = PCDMsPipeline.from_files(prior=demo_file("prior"), inpaint=demo_file("inpaint"),
                                        refine=demo_file("refine"), clip=demo_file("clip"), dino=demo_file("dino"),
                                        vae=demo_file("vae"))
        result = pipe(Image.open(example_file("source")), load_pose(example_file("source_pose")),
                      load_pose(example_file("target_pose")), size=SIZE, seed=42,
                      inpaint_settings=StageSettings(**SAMPLING["inpaint"]),
                      refine_settings=StageSettings(**SAMPLING["refine"]))
        _RESULT.append(result.images[0])
    return _RESULT[0]


def thumbnail(name: str, models: Models, path: Path) -> None:
    """A 512 x 384 card: the example source, the target skeleton, the result, and the workflow's title."""
    from PIL import Image, ImageDraw, ImageFont

    from pcdms_core import images as im

    card = Image.new("RGB", (512, 384), (24, 24, 28))
    src = Image.open(EXAMPLES / INPUTS["source"]).convert("RGB").resize((144, 208))
    pose = Image.open(EXAMPLES / INPUTS["target_pose_image"]).convert("RGB").resize((144, 208))
    result = Image.fromarray(im.to_uint8(example_result()[None])[0].permute(1, 2, 0).numpy()).resize((144, 208))
    for x, picture in ((16, src), (184, pose), (352, result)):
        card.paste(picture, (x, 36))
    draw = ImageDraw.Draw(card)
    try:
        font, small = ImageFont.load_default(size=24), ImageFont.load_default(size=16)
    except TypeError:  # Pillow < 10.1
        font = small = ImageFont.load_default()
    for x, label in ((16, "source"), (184, "target pose"), (352, "result")):
        draw.text((x, 250), label, fill=(200, 200, 200), font=small)
    draw.text((16, 290), TITLES[name], fill=(240, 240, 240), font=font)
    draw.text((16, 330), "on the bundled demo models" if models.suffix else
              "for the official models (picture: the demo models)", fill=(170, 200, 255), font=small)
    card.save(path, quality=90)


def build(out_dir: Path = WORKFLOWS) -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        modules = comfy_stub.install(Path(tmp))
        try:
            info = offline_object_info(comfy_stub.import_pack())
        finally:
            comfy_stub.uninstall(modules)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for models in (OFFICIAL, DEMO):
        for name, builder in BUILDERS.items():
            wf = builder(Graph(info, models))
            problems = check_workflow(wf, info)
            if problems:
                raise SystemExit(f"{name}: " + "; ".join(problems))
            wf["extra"]["pcdms_template"] = name + models.suffix
            path = out_dir / f"{file_title(name, models)}.json"
            path.write_text(json.dumps(wf, indent=1) + "\n")
            thumbnail(name, models, path.with_suffix(".jpg"))
            written.append(path)
    sys.modules.setdefault("build_workflows", sys.modules[__name__])  # one copy of this module when run as a script
    import build_native_workflows  # the native-path templates (KSampler on stages 2 and 3)

    written += build_native_workflows.write(info, out_dir)
    return written


if __name__ == "__main__":
    for p in build(Path(sys.argv[1]) if len(sys.argv) > 1 else WORKFLOWS):
        print(p)
