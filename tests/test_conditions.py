"""The stage conditions for hosts with their own sampler (``pcdms_core.stages.conditions``): driving the tiny
official-layout models by hand with them gives exactly what ``sample_inpaint`` / ``sample_refine`` give."""

from __future__ import annotations

import pytest
import torch

from helpers import PARITY, rel_l2
from pcdms_core import InputError, load_checkpoint, load_vae, sample_inpaint, sample_refine
from pcdms_core.stages.conditions import inpaint_conditions, refine_conditions
from pcdms_core.stages.loop import denoise, make_scheduler

SIZE = (24, 16)
STEPS, CFG = 3, 2.5


@pytest.fixture(scope="module")
def vae():
    return load_vae(PARITY / "vae")


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    u8 = lambda: torch.randint(0, 256, (1, 3, 20, 28), generator=g, dtype=torch.uint8)  # noqa: E731
    return dict(source=u8(), sp=u8(), tp=u8(), tokens=torch.randn(1, 5, 32, generator=g),
                emb=torch.randn(1, 1024, generator=g), noise=torch.randn(2, 4, 2, 6, generator=g),
                masked=torch.randn(1, 4, 2, 6, generator=g))


def _by_hand(model, conds, noise, pose_features=None):
    sched = make_scheduler("euler")
    sched.set_timesteps(STEPS)
    context = torch.cat([conds.uncond_context, conds.context])
    concat = torch.cat([conds.uncond_concat, conds.concat])
    labels = None if conds.class_label is None else torch.cat([conds.uncond_class_label, conds.class_label])

    def predict(x, t):
        x = torch.cat([x, concat], dim=1)
        if pose_features is None:
            return model(x, t, context)
        return model(x, t, context, torch.cat([pose_features, pose_features]), labels)

    return denoise(sched, noise * sched.init_noise_sigma, predict, guidance_scale=CFG)


@pytest.mark.parametrize("variant, file", [("paper", "s2_paper"), ("noprior", "s2_demo")])
def test_inpaint_conditions_reproduce_sample_inpaint(vae, inputs, variant, file):
    model = load_checkpoint(PARITY / "checkpoints" / f"{file}.pt", config=PARITY / "configs" / f"{file}_unet" / "config.json")
    emb = inputs["emb"] if variant == "paper" else None
    ref = sample_inpaint(model, vae, inputs["source"], inputs["sp"], inputs["tp"], inputs["tokens"], emb, size=SIZE,
                         steps=STEPS, guidance_scale=CFG, scheduler="euler", latents=inputs["noise"],
                         masked_latents=inputs["masked"], num_images=2, decode=False).latents
    conds = inpaint_conditions(model.image_proj, variant, vae, inputs["source"], inputs["sp"], inputs["tp"],
                               inputs["tokens"], emb, size=SIZE, pose_downscale=model.pose_proj.downscale,
                               masked_latents=inputs["masked"], num_images=2)
    assert conds.latent_shape == (2, 4, 2, 6) and conds.pose.shape == (2, 3, 16, 48)
    with torch.no_grad():
        ours = _by_hand(model, conds, inputs["noise"], model.pose_proj(conds.pose))
    assert rel_l2(ours, ref) < 1e-6
    if variant == "paper":  # the official unconditional branch: everything zero but pose, mask and masked latents
        assert not conds.uncond_context.any() and not conds.uncond_class_label.any()
    else:  # the projector applied to zero tokens
        assert conds.uncond_context.abs().sum() > 0


def test_refine_conditions_reproduce_sample_refine(vae, inputs):
    model = load_checkpoint(PARITY / "checkpoints" / "s3.pt", config=PARITY / "configs" / "s3_unet" / "config.json")
    coarse = inputs["source"]
    noise, latents = inputs["noise"][:, :, :, :3], inputs["masked"][:, :, :, :3]
    ref = sample_refine(model, vae, coarse, inputs["tokens"], size=SIZE, steps=STEPS, guidance_scale=CFG,
                        guidance_rescale=0.0, scheduler="euler", latents=noise, coarse_latents=latents,
                        num_images=2, decode=False).latents
    conds = refine_conditions(model.image_proj, vae, coarse, inputs["tokens"], size=SIZE, coarse_latents=latents,
                              num_images=2)
    with torch.no_grad():
        ours = _by_hand(model, conds, noise)
    assert rel_l2(ours, ref) < 1e-6
    assert not conds.uncond_context.any() and not conds.uncond_concat.any()


def test_conditions_refuse_what_the_variant_cannot_take(vae, inputs):
    model = load_checkpoint(PARITY / "checkpoints" / "s2_paper.pt", config=PARITY / "configs" / "s2_paper_unet" / "config.json")
    args = (model.image_proj, "paper", vae, inputs["source"], inputs["sp"], inputs["tp"], inputs["tokens"])
    with pytest.raises(InputError, match="needs the prior's target embedding"):
        inpaint_conditions(*args, size=SIZE, pose_downscale=8)
    with pytest.raises(InputError, match="takes no prior embedding"):
        inpaint_conditions(model.image_proj, "noprior", *args[2:], inputs["emb"], size=SIZE, pose_downscale=8)
    with pytest.raises(InputError, match="multiples of 8"):
        inpaint_conditions(*args, inputs["emb"], size=(20, 16), pose_downscale=8)
