"""Run with ComfyUI's Python inside its checkout: the nodes under ComfyUI's real model management.

    python mm_check.py COMFY_ENV_DIR PACK_DIR

Prints one JSON object: which models ComfyUI reports as loaded after each stage, what happens when the
next stage needs the memory, and how ComfyUI's own VAE (Load VAE) compares with the diffusers one on the
same weights (the stages use either).
"""

import json
import sys
from pathlib import Path

import torch

from inprocess import boot

env_dir, pack_dir = Path(sys.argv[1]), Path(sys.argv[2])
pack = boot(env_dir, pack_dir)

import comfy.model_management as mm  # noqa: E402
import folder_paths  # noqa: E402

S = pack.nodes.stages
L = pack.nodes.loaders
P = pack.nodes.pose_nodes
import nodes as comfy_nodes  # noqa: E402  (ComfyUI's core nodes: Load VAE)


def loaded() -> list[str]:
    out = []
    for m in mm.current_loaded_models:
        model = m.model.model
        out.append(type(getattr(model, "inner", model)).__name__)
    return sorted(out)


report = {}
prior = L.PCDMsCheckpointLoader.execute("s1_512.pt", "auto").result[0]
inpaint = L.PCDMsCheckpointLoader.execute("s2_512.pt", "auto").result[0]
clip = L.PCDMsCLIPVisionLoader.execute("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "auto").result[0]
dino = L.PCDMsDINOv2Loader.execute("dinov2-giant.safetensors", "auto").result[0]
vae = comfy_nodes.VAELoader().load_vae("sd21-base-vae.safetensors")[0]
report["after_loading"] = loaded()

from PIL import Image  # noqa: E402
import numpy as np  # noqa: E402

image = torch.from_numpy(np.asarray(Image.open(env_dir / "input" / "pcdms_example_source.png").convert("RGB"),
                                    dtype=np.float32) / 255)[None]
source = S.PCDMsEncodeSource.execute(image, dino, 64, 64, clip=clip).result[0]
report["after_encode"] = loaded()
src_pose = P.PCDMsLoadPose.execute("pcdms_example_source_pose.json", -1, 0, 0).result[0]
tgt_pose = P.PCDMsLoadPose.execute("pcdms_example_target_pose.json", -1, 0, 0).result[0]
emb = S.PCDMsPrior.execute(prior, source, src_pose, tgt_pose, 1, 3, 1.0, "unclip").result[0]
report["after_prior"] = loaded()

# On a GPU, loading the next stage frees what it needs on that device; ComfyUI's free_memory is that call.
mm.free_memory(1e30, mm.get_torch_device())
report["after_next_stage_needs_the_memory"] = loaded()
report["prior_device_after_free"] = str(next(prior.patcher.model.parameters()).device)

S.PCDMsInpaint.execute(inpaint, vae, source, 1, 2, 2.0, "auto", 1, embedding=emb, source_pose=src_pose,
                       target_pose=tgt_pose)
report["after_inpaint"] = loaded()

# ComfyUI's VAE and the diffusers VAE (pcdms_core.load_vae) on the same file.
core_vae = pack.pcdms_core
ours = core_vae.load_vae(folder_paths.get_full_path("vae", "sd21-base-vae.safetensors"))
codec = pack.nodes.bridge.ComfyVAECodec(vae)
mm.load_models_gpu([vae.patcher])
x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
with torch.no_grad():
    za = core_vae.encode(codec, x, torch.Generator().manual_seed(1))
    zb = core_vae.encode(ours, x, torch.Generator().manual_seed(1))
    da = core_vae.decode(codec, zb)
    db = core_vae.decode(ours, zb)
report["vae_encode_max_abs"] = float((za - zb).abs().max())
report["vae_encode_scale"] = float(zb.abs().max())
report["vae_decode_max_abs"] = float((da - db).abs().max())
report["vae_decode_u8_max_levels"] = int((da * 255).round().sub((db * 255).round()).abs().max())
print(json.dumps(report))
