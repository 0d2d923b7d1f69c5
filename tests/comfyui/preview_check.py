"""Run with ComfyUI's Python inside its checkout: latent previews against the decoded images.

    python preview_check.py COMFY_ENV_DIR PACK_DIR

For the bundled demo VAE (from the PCDMs VAE Loader), encodes the example source photo and flat colours the
preview fit never saw, previews the latents through the stages' step callback (ComfyUI's Latent2RGB
previewer), and compares each preview with the decoded image averaged to the preview's size. Prints one JSON
object: in 8-bit levels, the mean absolute error per latent cell and the largest error of the image's mean
colour (per channel), for our previews and for SD 1.5's factors on the same latents.
"""

import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from inprocess import boot

env_dir, pack_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, ".")  # ComfyUI's checkout, for its command-line options before the boot
import comfy.cli_args  # noqa: E402

pack = boot(env_dir, pack_dir, preview_method=comfy.cli_args.LatentPreviewMethod.Latent2RGB)

import comfy.utils  # noqa: E402

bridge, loaders = pack.nodes.bridge, pack.nodes.loaders
from ComfyUI_PCDMs.pcdms_core.networks.vae import decode, encode  # noqa: E402

previews = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, *a, **k: previews.append(preview))

vae = loaders.PCDMsVAELoader.execute("pcdms_demo_vae.safetensors", "fp32").result[0]
codec = vae.patcher.model.inner
photo = Image.open(pack_dir / "pcdms_core" / "demo_models" / "examples" / "pcdms_example_source.png").convert("RGB")
images = [np.asarray(photo.resize((64, 64), Image.BICUBIC))]
for colour in [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40), (240, 240, 240), (30, 30, 30)]:
    images.append(np.broadcast_to(np.array(colour, np.uint8), (64, 64, 3)))
pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
z = encode(codec, pixels, sample=False)
decoded = decode(codec, z)  # [0, 1]


def errors(callback_vae) -> dict[str, list[float]]:
    cells, colours = [], []
    for i in range(len(images)):
        previews.clear()
        bridge.step_callback(vae=callback_vae)(types.SimpleNamespace(step=0, total=1, denoised=z[i:i + 1]))
        (fmt, image, _), = previews
        prev = torch.from_numpy(np.asarray(image.convert("RGB"))).float()  # [h, w, 3] at latent size
        ref = F.adaptive_avg_pool2d(decoded[i:i + 1], prev.shape[:2])[0].permute(1, 2, 0) * 255
        cells.append(float((prev - ref).abs().mean()))
        colours.append(float((prev.mean((0, 1)) - ref.mean((0, 1))).abs().max()))
    return {"cells": cells, "colours": colours}


print(json.dumps({"ours": errors(vae), "sd15": errors(None), "latent_shape": list(z.shape)}))
