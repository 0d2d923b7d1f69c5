"""Write the native-path workflows (KSampler on PCDMs stages 2 and 3) in workflows/, for the official models and for
the bundled demo models, with their thumbnails.

    python scripts/build_native_workflows.py [OUT_DIR]

Built like the other templates (scripts/build_workflows.py): node widgets by name, checked against the schemas.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_workflows as bw  # noqa: E402
from pcdms_core.stages.loop import steps_run  # noqa: E402

NAME = "pcdms_native_ksampler"
TITLE = "PCDMs - native, KSampler on stages 2 and 3"
GAP = 40


def node_height(node: dict) -> int:
    """A height that holds the node's sockets and widgets as the frontend draws them."""
    sockets = max(len(node["inputs"]), len(node["outputs"]))
    widgets = len(node.get("widgets_values", [])) - sum(1 for v in node.get("widgets_values", []) if v == "fixed")
    return 30 + sockets * 22 + widgets * 26


def stack(columns: list[list[dict]]) -> None:
    """Place each column's nodes top to bottom, ``GAP`` apart, each as tall as it needs."""
    for col, nodes in enumerate(columns):
        y = 40
        for node in nodes:
            if node["type"] != "Note" and node["type"] not in bw.SIZES:
                node["size"] = [340, node_height(node)]
            node["pos"] = [40 + col * 420, y]
            y += node["size"][1] + GAP + 30  # the title bar sits above pos


def native(g: bw.Graph) -> dict:
    m = g.models
    demo = bool(m.suffix)
    s2 = m.inpaint_sampler
    s3 = m.refine_sampler
    if demo:
        k2 = dict(sampler_name="euler_ancestral", scheduler="normal", steps=s2["steps"], cfg=s2["cfg"])
        runs = steps_run(s3["steps"], s3["strength"])
        settings = (
            f"Stage 2: KSampler, {k2['sampler_name']}, {k2['steps']} steps, cfg {k2['cfg']:g} (what suits the small "
            "demo models).\n"
            f"Stage 3: KSampler Advanced from the coarse image's latent (start: coarse image), the last {runs} of "
            f"{s3['steps']} steps: img2img, as the demo models are run everywhere else."
        )
    else:
        k2 = dict(sampler_name="uni_pc_bh2", scheduler="sgm_uniform", steps=s2["steps"], cfg=s2["cfg"])
        settings = (
            f"Stage 2: KSampler {k2['sampler_name']} / {k2['scheduler']}, {k2['steps']} steps, cfg {k2['cfg']:g}: the "
            "closest to the official UniPC.\n"
            f"Stage 3: {s3['steps']} steps, cfg {s3['cfg']:g} (no guidance), as the paper's runs most likely used.\n"
            "Exact match with the PCDMs stage nodes: sampler euler + scheduler ddim_uniform equals their 'euler' "
            "scheduler (steps that divide 1000) when started from the same latents; ddim differs only by its last step."
        )
    note = g.node("Note", 0, 0, title="PCDMs native path", text=(
        "PCDMs stages 2 and 3 as ComfyUI MODELs: any core sampler, scheduler or model patch (FreeU, ...) works on them,\n"
        "and ComfyUI loads, casts and offloads them like any SD 2.x model. The PCDMs Conditioning nodes give the\n"
        "positive, the official negative and the latent.\n\n" + settings + "\n\n" + m.note))
    note["size"] = [420, 520]
    src = g.node("LoadImage", 0, 0, title="Source person", image=bw.INPUTS["source"])
    sp = g.node("PCDMsLoadPose", 0, 0, title="Source pose", pose_file=bw.INPUTS["source_pose"])
    tp = g.node("PCDMsLoadPose", 0, 0, title="Target pose", pose_file=bw.INPUTS["target_pose"])

    clip = g.node("PCDMsCLIPVisionLoader", 1, 0, encoder_name=m.clip)
    dino = g.node("PCDMsDINOv2Loader", 1, 0, encoder_name=m.dino)
    vae = g.node(m.vae_node, 1, 0, vae_name=m.vae)
    vae_out = "VAE" if m.vae_node == "VAELoader" else "vae"
    prior_model = g.node("PCDMsCheckpointLoader", 1, 0, title="Stage 1: prior", ckpt_name=m.prior)
    s2_model = g.node("PCDMsNativeLoader", 1, 0, title="Stage 2 as MODEL", ckpt_name=m.inpaint)
    s3_model = g.node("PCDMsNativeLoader", 1, 0, title="Stage 3 as MODEL", ckpt_name=m.refine)

    enc = g.node("PCDMsEncodeSource", 2, 0, width=m.size, height=m.size)
    g.link(src, "IMAGE", enc, "image")
    g.link(dino, "dino", enc, "dino")
    g.link(clip, "clip", enc, "clip")
    prior = g.node("PCDMsPrior", 2, 0, seed=42, steps=20, cfg=1.0, scheduler="unclip")
    g.link(prior_model, "model", prior, "model")
    g.link(enc, "source", prior, "source")
    g.link(sp, "pose_keypoint", prior, "source_pose")
    g.link(tp, "pose_keypoint", prior, "target_pose")

    cond2 = g.node("PCDMsInpaintConditioning", 3, 0, seed=0, batch_size=1)
    g.link(s2_model, "MODEL", cond2, "model")
    g.link(vae, vae_out, cond2, "vae")
    g.link(enc, "source", cond2, "source")
    g.link(prior, "embedding", cond2, "embedding")
    g.link(sp, "pose_keypoint", cond2, "source_pose")
    g.link(tp, "pose_keypoint", cond2, "target_pose")
    ks2 = g.node("KSampler", 3, 0, title="Stage 2: KSampler", seed=42, denoise=1.0, **k2)
    g.link(s2_model, "MODEL", ks2, "model")
    g.link(cond2, "positive", ks2, "positive")
    g.link(cond2, "negative", ks2, "negative")
    g.link(cond2, "latent", ks2, "latent_image")

    decode_type = "PCDMsVAEDecode" if demo else "VAEDecode"  # core VAE Decode cannot build the demo VAE
    dec2 = g.node(decode_type, 4, 0, title="Decode the canvas")
    g.link(ks2, "LATENT", dec2, "samples")
    g.link(vae, vae_out, dec2, "vae")
    crop = g.node("PCDMsCropTarget", 4, 0)
    g.link(dec2, "IMAGE" if not demo else "image", crop, "canvas")
    coarse = g.node("PreviewImage", 4, 0, title="Stage 2: coarse target")
    g.link(crop, "image", coarse, "images")

    cond3 = g.node("PCDMsRefineConditioning", 5, 0, seed=0, batch_size=1, start="coarse image" if demo else "noise")
    g.link(s3_model, "MODEL", cond3, "model")
    g.link(vae, vae_out, cond3, "vae")
    g.link(enc, "source", cond3, "source")
    g.link(crop, "image", cond3, "image")
    if demo:
        ks3 = g.node("KSamplerAdvanced", 5, 0, title="Stage 3: KSampler Advanced", add_noise="enable", noise_seed=42,
                     steps=s3["steps"], cfg=s3["cfg"], sampler_name="euler_ancestral", scheduler="normal",
                     start_at_step=s3["steps"] - steps_run(s3["steps"], s3["strength"]), end_at_step=10000,
                     return_with_leftover_noise="disable")
    else:
        ks3 = g.node("KSampler", 5, 0, title="Stage 3: KSampler", seed=42, steps=s3["steps"], cfg=s3["cfg"],
                     sampler_name="uni_pc_bh2", scheduler="sgm_uniform", denoise=1.0)
    g.link(s3_model, "MODEL", ks3, "model")
    g.link(cond3, "positive", ks3, "positive")
    g.link(cond3, "negative", ks3, "negative")
    g.link(cond3, "latent", ks3, "latent_image")
    dec3 = g.node(decode_type, 6, 0, title="Decode")
    g.link(ks3, "LATENT", dec3, "samples")
    g.link(vae, vae_out, dec3, "vae")
    save = g.node("SaveImage", 6, 0, filename_prefix="PCDMs/native")
    g.link(dec3, "IMAGE" if not demo else "image", save, "images")

    stack([[note, src, sp, tp], [clip, dino, vae, prior_model, s2_model, s3_model], [enc, prior], [cond2, ks2],
           [dec2, crop, coarse], [cond3, ks3], [dec3, save]])
    return g.to_json()


def _object_info() -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        modules = bw.comfy_stub.install(Path(tmp))
        try:
            return bw.offline_object_info(bw.comfy_stub.import_pack())
        finally:
            bw.comfy_stub.uninstall(modules)


def write(info: dict, out_dir: Path) -> list[Path]:
    """Write both variants (and thumbnails) into ``out_dir``, built against the schemas ``info``."""
    bw.TITLES[NAME] = TITLE
    written = []
    for models in (bw.OFFICIAL, bw.DEMO):
        wf = native(bw.Graph(info, models))
        problems = bw.check_workflow(wf, info)
        if problems:
            raise SystemExit(f"{NAME}: " + "; ".join(problems))
        wf["extra"]["pcdms_template"] = NAME + models.suffix
        path = out_dir / f"{bw.file_title(NAME, models)}.json"
        path.write_text(json.dumps(wf, indent=1) + "\n")
        bw.thumbnail(NAME, models, path.with_suffix(".jpg"))
        written.append(path)
    return written


def build(out_dir: Path = bw.WORKFLOWS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return write(_object_info(), out_dir)


if __name__ == "__main__":
    for p in build(Path(sys.argv[1]) if len(sys.argv) > 1 else bw.WORKFLOWS):
        print(p)
