"""The samplers at working sizes that are multiples of 8 but not of 16, against the official pipelines.

References: tests/fixtures/parity_sizes/ (README.md, manifest.json): the official PCDMs code run on the tiny
models and inputs of the dev set (tests/fixtures/parity/) at 40x40, 24x24 and height 56 x width 40 per half.
There the latent grid does not halve evenly through the UNet levels (5 -> 3, 7 -> 4, 3 -> 2 -> 1), so the
up-blocks must upsample to the size of their skip connection. The runs: paper stage 2 with the dev 2-level
UNet and with a new 3-level one, the no-prior ("demo") stage 2, and stage 3, guidance 1 and 2.

Tolerances as in test_parity_samplers.py (dev README §7): uint8 canvases, masks and timesteps exact, forward
tensors at ``assert_close``, trajectories per step, final latents 1e-4 relative L2, images within one level.
The references were made on another CPU than the S=64 dev ones; 1e-6-level float differences are expected.

Seeds (README §4): the pipeline generator is G; the official code seeded the global RNG with G - 100 right
before the call (the demo: before its preprocessing, whose VAE sample is the only global draw); explicit
initial latents are stored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pcdms_core as pc
from pcdms_core.images import resize_u8

from helpers import record_calls, assert_close, assert_trajectory_close, assert_u8_close, rel_l2

SIZES = Path(__file__).parent / "fixtures" / "parity_sizes"
MANIFEST = json.loads((SIZES / "manifest.json").read_text())
FINAL_RTOL = 1e-4

# Size tags (README §1): (W, H) per half.
TAGS = {"s40": (40, 40), "s24": (24, 24), "h56w40": (40, 56)}

PAPER_RUNS = ["s2p_s40_5", "s2p_s40_gen5", "s2p_h56w40_5", "s2p3_s40_5", "s2p3_s24_5"]
NOPRIOR_RUNS = ["demo_s40_10"]
STAGE3_RUNS = ["s3_s40_g1", "s3_s40_g2", "s3_h56w40_g1", "s3_h56w40_g2"]


def _run_info(run: str) -> dict:
    """What the manifest says about ``run``: its refs file, size tag, (W, H), seed G, steps, guidance."""
    m = MANIFEST["runs"][run]
    call = m["call"]
    size = (m["per_half"]["width"], m["per_half"]["height"])
    tag = next(t for t, s in TAGS.items() if s == size)
    seed = int(re.fullmatch(r"torch\.Generator\('cpu'\)\.manual_seed\((\d+)\)", call["generator"]).group(1))
    return dict(
        file=m["file"].removeprefix("refs_").removesuffix(".safetensors"),
        checkpoint=m["checkpoint"].split()[0].removesuffix(".pt"),
        tag=tag,
        size=size,
        seed=seed,
        steps=call["num_inference_steps"],
        guidance=call["guidance_scale"],
        rescale=call.get("guidance_rescale"),
        explicit_latents=call["latents"] is not None,
    )


def test_the_run_lists_cover_the_manifest():
    assert sorted(PAPER_RUNS + NOPRIOR_RUNS + STAGE3_RUNS) == sorted(MANIFEST["runs"])
    for run in MANIFEST["runs"]:
        info = _run_info(run)
        # README §4: G - 100 seeds the global RNG before the call (or the demo's preprocessing).
        m = MANIFEST["runs"][run]
        global_seed = m.get("global_seed_before_call", m.get("preprocessing", {}).get("global_seed_before_preprocessing"))
        assert global_seed == info["seed"] - 100
        if info["explicit_latents"]:
            assert m["init_latents_seed"].endswith(f"manual_seed({info['seed'] - 200}))")


# --- fixtures -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sizes_refs():
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = load_file(str(SIZES / f"refs_{name}.safetensors"))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def sizes_models(models):
    """The dev models of the ``models`` fixture, plus the 3-level paper stage-2 checkpoint of this set."""
    three_level = []

    def get(name: str):
        if name == "s2_paper_3level":
            if not three_level:
                three_level.append(pc.load_checkpoint(
                    SIZES / "checkpoints" / "s2_paper_3level.pt",
                    config=SIZES / "configs" / "s2_paper_3level_unet" / "config.json",
                ))
            return three_level[0]
        return models(name)

    return get


class Steps:
    def __init__(self):
        self.timesteps: list[int] = []
        self.latents: list[torch.Tensor] = []

    def __call__(self, info):
        self.timesteps.append(info.timestep)
        self.latents.append(info.latents.clone())


def _u8_hwc(images: torch.Tensor) -> torch.Tensor:
    return pc.to_uint8(images).permute(0, 2, 3, 1)


def _coarse(inputs):
    return inputs("../refs/s3_input_coarse.png")


@pytest.fixture(scope="module")
def sampled(sizes_models, inputs, sizes_refs):
    """Each run sampled once through the public samplers: (info, refs, result, steps, network calls)."""
    cache: dict[str, tuple] = {}

    def get(run: str):
        if run in cache:
            return cache[run]
        info = _run_info(run)
        r = sizes_refs(info["file"])
        dino = sizes_models("dinov2")
        vae = sizes_models("vae")
        model = sizes_models(info["checkpoint"])
        latents = r[f"run.{run}.init_latents"] if info["explicit_latents"] else None
        steps = Steps()
        with record_calls(model) as calls:
            if run in PAPER_RUNS:
                src = inputs("src_a.png")
                res = pc.sample_inpaint(
                    model, vae, src, inputs("pose_a.png"), inputs("pose_t1.png"), dino.encode(src, info["size"]),
                    r["run.inputs.pred_t_img_embed"], size=info["size"], steps=info["steps"],
                    guidance_scale=info["guidance"], guidance_rescale=info["rescale"], generator=info["seed"],
                    latents=latents, callback=steps,
                )
            elif run in NOPRIOR_RUNS:
                src = inputs("src_b.png")
                res = pc.sample_inpaint(
                    model, vae, src, inputs("pose_b.png"), inputs("pose_t2.png"), dino.encode(src, info["size"]),
                    size=info["size"], steps=info["steps"], guidance_scale=info["guidance"],
                    generator=info["seed"], latents=latents,
                    masked_latents=r[f"run.{run}.simg_mask_latents"], callback=steps,
                )
            else:
                res = pc.sample_refine(
                    model, vae, _coarse(inputs), dino.encode(inputs("src_a.png"), info["size"]),
                    size=info["size"], steps=info["steps"], guidance_scale=info["guidance"],
                    guidance_rescale=info["rescale"], generator=info["seed"], latents=latents, callback=steps,
                )
        cache[run] = (info, r, res, steps, calls)
        return cache[run]

    return get


def _stats_close(x: torch.Tensor, stats: torch.Tensor, rtol: float = 1e-5) -> None:
    """``x`` against float64 [sum, abs_sum, sum_sq, min, max, numel] (the sum relative to abs_sum: it cancels)."""
    x = x.double()
    assert x.numel() == int(stats[5])
    got = torch.stack([x.sum(), x.abs().sum(), (x * x).sum(), x.min(), x.max()])
    scale = torch.stack([stats[1], stats[1], stats[2], stats[3:5].abs().max(), stats[3:5].abs().max()])
    diff = (got - stats[:5]).abs()
    assert bool((diff <= rtol * scale).all()), f"stats {got.tolist()} vs {stats[:5].tolist()}"


# --- preprocessing: canvases, DINOv2 tokens -------------------------------------------------------------------------

@pytest.mark.parametrize("image, tag", [("src_a", "s40"), ("src_a", "s24"), ("src_a", "h56w40"), ("src_b", "s40")])
def test_dinov2_tokens_at_each_size(sizes_models, inputs, sizes_refs, image, tag):
    pre = sizes_refs("preprocess")
    key = f"pre.{image}.{tag}"
    img = inputs(f"{image}.png")
    # The CLIP-processor pixels DINOv2 reads: source stretched to (W, H), short side 224, centre crop.
    _stats_close(pc.preprocess(img, TAGS[tag]), pre[f"{key}.clip_pixel_values_stats"], rtol=1e-7)
    tokens = sizes_models("dinov2").encode(img, TAGS[tag])
    assert_close(tokens, pre[f"{key}.dino_last_hidden_state"])


@pytest.mark.parametrize("file, tag", [("stage2_paper", "s40"), ("stage2_paper", "h56w40"),
                                       ("stage2_paper_3level", "s40"), ("stage2_paper_3level", "s24")])
def test_paper_canvases_from_the_input_files(inputs, sizes_refs, file, tag):
    r = sizes_refs(file)
    masked, poses = pc.prepare_canvases(inputs("src_a.png"), inputs("pose_a.png"), inputs("pose_t1.png"), TAGS[tag])
    w, h = TAGS[tag]
    assert masked.dtype == torch.uint8 and tuple(masked.shape) == (1, 3, h, 2 * w)
    assert torch.equal(masked[0], r[f"run.inputs.{tag}.vae_image_u8"])
    assert torch.equal(poses[0], r[f"run.inputs.{tag}.st_pose_u8"])


def test_noprior_canvases_from_the_input_files(inputs, sizes_refs):
    r = sizes_refs("stage2_demo")
    masked, poses = pc.prepare_canvases(inputs("src_b.png"), inputs("pose_b.png"), inputs("pose_t2.png"), (40, 40))
    assert torch.equal(masked[0], r["run.inputs.s40.vae_image_u8"])
    assert torch.equal(poses[0], r["run.inputs.s40.st_pose_u8"])


@pytest.mark.parametrize("tag", ["s40", "h56w40"])
def test_stage3_coarse_image_resized(inputs, sizes_refs, tag):
    r = sizes_refs("stage3")
    coarse = resize_u8(pc.as_uint8_batch(_coarse(inputs)), TAGS[tag])
    assert torch.equal(coarse[0], r[f"run.inputs.{tag}.gen_t_img_u8"])


# --- VAE posterior samples (the first generator draw) ---------------------------------------------------------------

@pytest.mark.parametrize("run", PAPER_RUNS)
def test_paper_masked_latents(sizes_models, inputs, sizes_refs, run):
    info = _run_info(run)
    r = sizes_refs(info["file"])
    vae = sizes_models("vae")
    # The generator's first draw is the posterior noise; in the gen run its second draw is the initial latents.
    gen = torch.Generator().manual_seed(info["seed"])
    noise = torch.randn(r[f"run.{run}.vae_sample_noise"].shape, generator=gen)
    assert torch.equal(noise, r[f"run.{run}.vae_sample_noise"])
    if not info["explicit_latents"]:
        assert torch.equal(torch.randn(noise.shape, generator=gen), r[f"run.{run}.generator_latents"])
    canvas = pc.to_model_range(r[f"run.inputs.{info['tag']}.vae_image_u8"][None])
    mean, std = pc.encode_posterior(vae, canvas)
    moments = r[f"run.{run}.vae_moments"]
    assert_close(mean, moments[:, :4])
    assert_close(std, torch.exp(0.5 * moments[:, 4:].clamp(-30, 20)))
    assert_close(pc.encode(vae, canvas, torch.Generator().manual_seed(info["seed"])), r[f"run.{run}.masked_latents"])
    latents = pc.encode_canvas(vae, inputs("src_a.png"), info["size"], generator=info["seed"])
    assert_close(latents, r[f"run.{run}.masked_latents"])


def test_noprior_masked_latents_from_the_global_seed(sizes_models, sizes_refs):
    """The notebook's VAE sample came from the global RNG seeded with G - 100 = 2454 (CPU: the same stream)."""
    r = sizes_refs("stage2_demo")
    seed = _run_info("demo_s40_10")["seed"] - 100
    assert torch.equal(torch.randn(1, 4, 5, 10, generator=torch.Generator().manual_seed(seed)),
                       r["run.demo_s40_10.vae_sample_noise_global"])
    canvas = pc.to_model_range(r["run.inputs.s40.vae_image_u8"][None])
    latents = pc.encode(sizes_models("vae"), canvas, torch.Generator().manual_seed(seed))
    assert_close(latents, r["run.demo_s40_10.simg_mask_latents"])


@pytest.mark.parametrize("run", STAGE3_RUNS)
def test_stage3_coarse_latents(sizes_models, inputs, sizes_refs, run):
    info = _run_info(run)
    r = sizes_refs("stage3")
    vae = sizes_models("vae")
    assert torch.equal(torch.randn(r[f"run.{run}.vae_sample_noise"].shape,
                                   generator=torch.Generator().manual_seed(info["seed"])),
                       r[f"run.{run}.vae_sample_noise"])
    mean, std = pc.encode_posterior(vae, pc.to_model_range(r[f"run.inputs.{info['tag']}.gen_t_img_u8"][None]))
    moments = r[f"run.{run}.vae_moments"]
    assert_close(mean, moments[:, :4])
    assert_close(std, torch.exp(0.5 * moments[:, 4:].clamp(-30, 20)))
    latents = pc.encode_coarse(vae, _coarse(inputs), info["size"], generator=info["seed"])
    assert_close(latents, r[f"run.{run}.gen_t_img_f"])


# --- the sampler runs -----------------------------------------------------------------------------------------------

ALL_RUNS = PAPER_RUNS + NOPRIOR_RUNS + STAGE3_RUNS


@pytest.mark.parametrize("run", ALL_RUNS)
def test_timesteps(sampled, run):
    info, r, res, steps, calls = sampled(run)
    assert steps.timesteps == r[f"run.{run}.timesteps"].tolist()
    assert len(calls) == info["steps"]


@pytest.mark.parametrize("run", PAPER_RUNS)
def test_paper_step0_conditioning(sampled, run):
    """The CFG batch of step 0 as the official pipeline builds it: [uncond; cond], 9 channels, the default mask."""
    info, r, res, steps, calls = sampled(run)
    sample, t, context, pose, labels = calls[0][0]
    assert_close(sample, r[f"run.{run}.step0.model_in"])
    assert torch.equal(sample[:, 4:5], r[f"run.{run}.mask"].expand(2, -1, -1, -1))
    assert_close(sample[:, 5:], r[f"run.{run}.masked_latents"].expand(2, -1, -1, -1))
    assert_close(labels, r[f"run.{run}.class_labels"][:, 0])
    assert torch.equal(context[:1], torch.zeros_like(context[:1]))  # paper uncond: zeros after projection
    tag = info["tag"]
    assert context.shape[1] == 258
    assert_close(context[1:, :2], r[f"run.inputs.{tag}.s_img_proj_f_first2"])
    _stats_close(context[1:, :257], r[f"run.inputs.{tag}.s_img_proj_f_stats"])
    _stats_close(context, r[f"run.{run}.encoder_hidden_states_stats"])
    assert_close(context[1:, 257:], r["run.inputs.pred_t_img_embed"])
    assert_close(pose[1:], r[f"run.inputs.{tag}.st_pose_f"])


def test_noprior_step0_conditioning(sampled):
    run = "demo_s40_10"
    info, r, res, steps, calls = sampled(run)
    sample, t, context, pose, labels = calls[0][0]
    assert labels is None
    assert_close(sample, r[f"run.{run}.step0.model_in"])
    assert torch.equal(sample[:, 4:5], r["run.inputs.s40.mask"].expand(2, -1, -1, -1))
    # No-prior CFG: the projector applied to zero DINOv2 tokens, then the real tokens.
    neg = r["run.inputs.s40.negative_prompt_embeds_token0"][0, 0]
    assert_close(context[0], neg.expand(context.shape[1], -1))
    assert_close(context[1:, :2], r["run.inputs.s40.prompt_embeds_first2"])
    _stats_close(context[1:], r["run.inputs.s40.prompt_embeds_stats"])
    assert_close(pose[:1], r["run.inputs.s40.cond_pose"])


@pytest.mark.parametrize("run", STAGE3_RUNS)
def test_stage3_step0_conditioning(sampled, run):
    info, r, res, steps, calls = sampled(run)
    sample, t, context = calls[0][0]
    assert_close(sample, r[f"run.{run}.step0.model_in"])
    cond = context[-1:]
    assert_close(cond[:, :2], r[f"run.inputs.{info['tag']}.s_img_proj_f_first2"])
    _stats_close(cond, r[f"run.inputs.{info['tag']}.s_img_proj_f_stats"])
    assert_close(sample[-1:, 4:], r[f"run.{run}.gen_t_img_f"])
    if info["guidance"] > 1:
        assert torch.equal(context[:1], torch.zeros_like(context[:1]))
        assert torch.equal(sample[:1, 4:], torch.zeros_like(sample[:1, 4:]))


@pytest.mark.parametrize("run", ALL_RUNS)
def test_network_outputs_steps_0_and_1(sampled, run):
    info, r, res, steps, calls = sampled(run)
    assert_close(calls[0][2], r[f"run.{run}.step0.model_out"])
    assert_close(calls[1][2], r[f"run.{run}.step1.model_out"])
    # What the scheduler got: the official CFG (u + w (c - u)), then the rescale when set.
    for i in (0, 1):
        out = calls[i][2]
        if info["guidance"] > 1:
            u, c = out.chunk(2)
            guided = u + info["guidance"] * (c - u)
            if info["rescale"]:
                guided = pc.rescale_guidance(guided, c, info["rescale"])
        else:
            guided = out
        assert_close(guided, r[f"run.{run}.step{i}.guided"])


@pytest.mark.parametrize("run", ALL_RUNS)
def test_latents_step_by_step(sampled, run):
    info, r, res, steps, calls = sampled(run)
    assert_close(steps.latents[0], r[f"run.{run}.step0.latents_after"])
    assert_close(steps.latents[1], r[f"run.{run}.step1.latents_after"])
    if f"run.{run}.traj" in r:
        assert_trajectory_close(torch.stack(steps.latents), r[f"run.{run}.traj"])
    else:
        assert info["steps"] > 7  # README §4: no traj for the 10-step run


@pytest.mark.parametrize("run", ALL_RUNS)
def test_final_latents(sampled, run):
    info, r, res, steps, calls = sampled(run)
    assert rel_l2(res.latents, r[f"run.{run}.final_latents"]) < FINAL_RTOL


@pytest.mark.parametrize("run", ALL_RUNS)
def test_images(sampled, run):
    info, r, res, steps, calls = sampled(run)
    w, h = info["size"]
    if run in STAGE3_RUNS:
        images = res.images
        assert tuple(images.shape) == (1, 3, h, w)
    else:
        images = res.canvas
        assert tuple(images.shape) == (1, 3, h, 2 * w)
        assert torch.equal(res.target, res.canvas[..., w:])
    assert_u8_close(_u8_hwc(images), r[f"run.{run}.images_u8"])
