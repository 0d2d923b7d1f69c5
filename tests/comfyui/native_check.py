"""Run with ComfyUI's Python inside its checkout: the native path (PCDMs UNets as ComfyUI MODELs) under ComfyUI's
real samplers, patches and model management, against the faithful path on the same tiny models.

    python native_check.py COMFY_ENV_DIR PACK_DIR

Prints one JSON object (the last line of stdout).
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
import nodes as comfy_nodes  # noqa: E402
from comfy_extras.nodes_freelunch import FreeU  # noqa: E402

N = pack.nodes.native
core = pack.pcdms_core
from ComfyUI_PCDMs.pcdms_core.stages.loop import make_scheduler  # noqa: E402
from ComfyUI_PCDMs.pcdms_core.pipeline import SourceFeatures  # noqa: E402

SIZE = (48, 40)  # (W, H) of one half: not square, so the halves and the latent grid are checked
STEPS, CFG = 5, 2.0
report = {}


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def pcdms_path(name):
    return folder_paths.get_full_path("pcdms", name)


g = torch.Generator().manual_seed(0)
tokens = torch.randn(1, 257, 32, generator=g)
pixels = torch.randint(0, 256, (1, 3, 40, 48), generator=g, dtype=torch.uint8)
source = SourceFeatures(pixels=pixels, size=SIZE, tokens=tokens)
source_pose = torch.randint(0, 256, (1, 3, 40, 48), generator=g, dtype=torch.uint8)
target_pose = torch.randint(0, 256, (1, 3, 40, 48), generator=g, dtype=torch.uint8)
embedding = torch.randn(1, 1024, generator=g)
comfy_vae = comfy_nodes.VAELoader().load_vae("sd21-base-vae.safetensors")[0]
core_vae = core.load_vae(folder_paths.get_full_path("vae", "sd21-base-vae.safetensors"))
h, w = SIZE[1] // 8, SIZE[0] // 8
masked = torch.randn(1, 4, h, 2 * w, generator=g)
coarse_latents = torch.randn(1, 4, h, w, generator=g)
noise2 = torch.randn(1, 4, h, 2 * w, generator=g)
noise3 = torch.randn(1, 4, h, w, generator=g)
coarse = torch.rand(1, 40, 48, 3, generator=g)


def init_sigma(scheduler):
    s = make_scheduler(scheduler)
    s.set_timesteps(STEPS)
    return float(s.init_noise_sigma)


def first_alpha(scheduler):
    s = make_scheduler(scheduler)
    s.set_timesteps(STEPS)
    return float(s.alphas_cumprod[int(s.timesteps[0])])


def ksample(model, positive, negative, latent, sampler, scheduler, start=None, seed=None):
    """KSampler (seed given: its own noise) or KSampler Advanced without added noise (``start``: our initial
    latents, already scaled as the scheduler's start)."""
    if start is not None:
        latent = {"samples": start / model.model.latent_format.scale_factor}
        out = comfy_nodes.common_ksampler(model, 0, STEPS, CFG, sampler, scheduler, positive, negative, latent,
                                          disable_noise=True, force_full_denoise=True)[0]
    else:
        out = comfy_nodes.common_ksampler(model, seed, STEPS, CFG, sampler, scheduler, positive, negative, latent)[0]
    return out["samples"] * model.model.latent_format.scale_factor


def faithful(kind, scheduler):
    if kind == "refine":
        m = core.load_checkpoint(pcdms_path("s3_512.pt"))
        return core.sample_refine(m, core_vae, (coarse.movedim(-1, 1) * 255).round().to(torch.uint8), tokens,
                                  size=SIZE, steps=STEPS, guidance_scale=CFG, guidance_rescale=0.0,
                                  scheduler=scheduler, latents=noise3, coarse_latents=coarse_latents,
                                  decode=False).latents
    m = core.load_checkpoint(pcdms_path({"paper": "s2_512.pt", "noprior": "PCDMs_ckpt.pt"}[kind]))
    return core.sample_inpaint(m, core_vae, pixels, source_pose, target_pose, tokens,
                               embedding if kind == "paper" else None, size=SIZE, steps=STEPS, guidance_scale=CFG,
                               scheduler=scheduler, latents=noise2, masked_latents=masked, decode=False).latents


def native(kind):
    name = {"paper": "s2_512.pt", "noprior": "PCDMs_ckpt.pt", "refine": "s3_512.pt"}[kind]
    model = N.PCDMsNativeLoader.execute(name, "default").result[0]
    if kind == "refine":
        pos, neg, lat = N.refine_conditioning(model, comfy_vae, source, coarse, coarse_latents=coarse_latents)
    else:
        pos, neg, lat = N.inpaint_conditioning(model, comfy_vae, source, embedding=embedding if kind == "paper" else None,
                                               source_pose_image=source_pose.movedim(1, -1).float() / 255,
                                               target_pose_image=target_pose.movedim(1, -1).float() / 255,
                                               masked_latents=masked)
    return model, pos, neg, lat


report["equivalence"] = {}
report["ddim"] = {}
report["samplers"] = {}
for kind in ("paper", "noprior", "refine"):
    model, pos, neg, lat = native(kind)
    noise = noise3 if kind == "refine" else noise2
    ours = faithful(kind, "euler")
    theirs = ksample(model, pos, neg, lat, "euler", "ddim_uniform", start=noise * init_sigma("euler"))
    report["equivalence"][kind] = rel(theirs, ours)
    ours_ddim = faithful(kind, "ddim")
    # DDIM works on x_t = sqrt(a) x0 + sqrt(1 - a) eps, ComfyUI on x_t / sqrt(a): the same start, rescaled
    theirs_ddim = ksample(model, pos, neg, lat, "ddim", "ddim_uniform", start=noise / first_alpha("ddim") ** 0.5)
    report["ddim"][kind] = rel(theirs_ddim, ours_ddim)
    if kind == "noprior":  # samplers and patches: one model of each stage is enough
        continue
    runs = {}
    for sampler, scheduler in (("euler", "normal"), ("dpmpp_2m", "karras"), ("uni_pc", "simple")):
        out = ksample(model, pos, neg, lat, sampler, scheduler, seed=3)
        runs[f"{sampler}/{scheduler}"] = {"finite": bool(torch.isfinite(out).all()), "shape": list(out.shape),
                                         "std": float(out.detach().std())}
    free = FreeU().patch(model, 1.3, 1.4, 0.9, 0.2)[0]
    patched = ksample(free, pos, neg, lat, "euler", "normal", seed=3)
    plain = ksample(model, pos, neg, lat, "euler", "normal", seed=3)
    runs["freeu"] = {"finite": bool(torch.isfinite(patched).all()), "differs": rel(patched, plain)}
    report["samplers"][kind] = runs

# ModelPatcher sees the real size; loaded partially it gives what it gives loaded whole.
model, pos, neg, lat = native("paper")
params = sum(p.numel() * p.element_size() for p in model.model.parameters())
report["size"] = {"patcher": int(model.model_size()), "parameters": int(params)}
whole = ksample(model, pos, neg, lat, "euler", "ddim_uniform", start=noise2 * init_sigma("euler"))
mm.unload_all_models()
partial_model, pos, neg, lat = native("paper")
budget = partial_model.model_size() // 3
partial_model.load(mm.get_torch_device(), lowvram_model_memory=budget, full_load=False)
cast = sum(1 for m in partial_model.model.modules() if getattr(m, "comfy_cast_weights", False))
real_load = mm.load_models_gpu
mm.load_models_gpu = lambda *a, **k: None  # keep the partial load for this run (on a CPU, ComfyUI loads whole)
try:
    part = ksample(partial_model, pos, neg, lat, "euler", "ddim_uniform", start=noise2 * init_sigma("euler"))
finally:
    mm.load_models_gpu = real_load
report["partial"] = {"budget": int(budget), "cast_modules": cast, "rel": rel(part, whole),
                     "loaded_bytes": int(partial_model.model.model_loaded_weight_memory)}

# The demo models' latent space: the demo VAE's scale, and preview colours fitted to it.
from ComfyUI_PCDMs.pcdms_core.bundled import demo_file  # noqa: E402

demo_format = N.load_native(str(demo_file("inpaint"))).model.latent_format
report["demo_latent"] = {"scale": float(demo_format.scale_factor),
                         "rgb_rows": len(demo_format.latent_rgb_factors or []),
                         "vae_scale": float(core.load_vae(demo_file("vae")).config.scaling_factor)}

# Bad input on the native path: one clear message each.
def error_of(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        return f"{type(exc).__name__}: {exc}"
    return None


paper_model, pos, neg, lat = native("paper")
refine_model = N.PCDMsNativeLoader.execute("s3_512.pt", "default").result[0]
demo_model = N.load_native(str(demo_file("inpaint")))
wrong_latent = {"samples": torch.zeros(1, 4, 8, 8)}
report["errors"] = {
    "prior_file": error_of(lambda: N.PCDMsNativeLoader.execute("s1_512.pt", "default")),
    "stage_mismatch": error_of(lambda: N.refine_conditioning(paper_model, comfy_vae, source, coarse)),
    "not_pcdms": error_of(lambda: N.inpaint_conditioning(object(), comfy_vae, source)),
    "vae_scale": error_of(lambda: N.inpaint_conditioning(
        demo_model, comfy_vae, SourceFeatures(pixels=pixels, size=(64, 64), tokens=torch.randn(1, 257, 128)),
        embedding=torch.randn(1, 128), source_pose_image=coarse, target_pose_image=coarse)),
    "latent_size": error_of(lambda: ksample(paper_model, pos, neg, wrong_latent, "euler", "normal", seed=1)),
    "other_model": error_of(lambda: ksample(native("noprior")[0], pos, neg, lat, "euler", "normal", seed=1)),
    "no_pcdms_conditioning": error_of(lambda: ksample(refine_model, [[torch.zeros(1, 1, 1024), {}]],
                                                      [[torch.zeros(1, 1, 1024), {}]], lat, "euler", "normal", seed=1)),
}

# Core Load CLIP Vision's models in PCDMs Encode Source: the same features as our loaders on the same weights.
import comfy.clip_vision  # noqa: E402
import comfy.utils  # noqa: E402

features, objects = {}, {}
for kind, name in (("clip", "CLIP-ViT-H-14-laion2B-s32B-b79K"), ("dinov2", "dinov2-giant")):
    path = folder_paths.get_full_path("clip_vision", name + ".safetensors")
    cv = comfy.clip_vision.ClipVisionModel(str(Path(path).with_suffix(".json")))
    cv.load_sd(comfy.utils.load_torch_file(path))
    objects[kind] = cv
    adapted = N.encoder_from_clip_vision(cv, kind)  # in ComfyUI's dtype for encoders (fp32 on this CPU)
    # ours from the file, each tensor rounded to the dtype ComfyUI stores it in, computing in the adapter's dtype
    ours = core.load_image_encoder(path, dtype=adapted.dtype)
    stored = cv.get_sd()
    with torch.no_grad():
        for key, value in ours.model.state_dict().items():
            if key in stored and stored[key].dtype != value.dtype:
                value.copy_(value.to(stored[key].dtype))
    features[kind] = (adapted, ours)
cv_dino, cv_clip = objects["dinov2"], objects["clip"]
comfy_dino, our_dino = features["dinov2"]
comfy_clip, our_clip = features["clip"]
image = torch.rand(2, 3, 60, 44, generator=g)
a = core.encode_source(image, comfy_dino.patcher.model.inner, comfy_clip.patcher.model.inner, size=SIZE)
b = core.encode_source(image, our_dino, our_clip, size=SIZE)
report["clip_vision"] = {"comfy_dtype": str(cv.dtype), "dtype": str(comfy_dino.dtype), "tokens": rel(a.tokens, b.tokens), "clip": rel(a.clip_embedding, b.clip_embedding),
                         "shared": comfy_dino.patcher.model.inner.model.state_dict()["embeddings.cls_token"].data_ptr()
                         == cv.get_sd()["embeddings.cls_token"].data_ptr()}
# ... and through the node: PCDMs Encode Source with Load CLIP Vision's models, against our encoders
S, L = pack.nodes.stages, pack.nodes.loaders
photo = image[:1].movedim(1, -1)
via_core = S.PCDMsEncodeSource.execute(photo, cv_dino, SIZE[0], SIZE[1], clip=cv_clip).result[0]
via_ours = core.encode_source(photo.movedim(-1, 1), our_dino, our_clip, size=SIZE)
report["clip_vision"]["node_tokens"] = rel(via_core.tokens, via_ours.tokens)
report["clip_vision"]["node_clip"] = rel(via_core.clip_embedding, via_ours.clip_embedding)
dino_json = str(Path(folder_paths.get_full_path("clip_vision", "dinov2-giant.safetensors")).with_suffix(".json"))
# Where our encoder computes in ComfyUI's storage dtype (fp16 on a GPU), it holds ComfyUI's tensors, not a copy:
# on this CPU it computes in fp32, so the role's dtype is made ComfyUI's for this one check.
bridge, real_load_dtype = pack.nodes.bridge, pack.nodes.bridge.load_dtype
bridge.load_dtype = lambda choice, role="unet": cv_dino.dtype
try:
    same = comfy.clip_vision.ClipVisionModel(dino_json)
    same.load_sd(comfy.utils.load_torch_file(folder_paths.get_full_path("clip_vision", "dinov2-giant.safetensors")))
    held = N.encoder_from_clip_vision(same, "dinov2").patcher.model.inner.model.state_dict()
    pairs = [(held[k], v) for k, v in same.get_sd().items() if k in held and v.dtype == cv_dino.dtype]
    report["clip_vision"]["shared_in_storage_dtype"] = len(pairs) > 10 and all(
        a.data_ptr() == b.data_ptr() for a, b in pairs)
finally:
    bridge.load_dtype = real_load_dtype
try:
    N.encoder_from_clip_vision(comfy.clip_vision.ClipVisionModel(dino_json), "clip")
    report["clip_vision"]["wrong_kind"] = None
except Exception as exc:  # noqa: BLE001 - the message is what is checked
    report["clip_vision"]["wrong_kind"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
