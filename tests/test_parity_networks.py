"""Forward passes of every network against the official implementation's outputs (fp32, atol 1e-5 / rtol 1e-4)."""

import torch

from pcdms_core import images as im
from pcdms_core.networks import vae as vae_ops
from pcdms_core.networks.prior import to_clip_space

from helpers import assert_close


def test_prior_forward(models, refs):
    r = refs("stage1")
    prior = models("s1")
    with torch.no_grad():
        out = prior(
            r["fwd.prior.in.hidden_states"], r["fwd.prior.in.timestep"], r["fwd.prior.in.proj_embedding"],
            r["fwd.prior.in.encoder_hidden_states"], r["fwd.prior.in.encoder_hidden_states1"],
        )
    assert_close(out, r["fwd.prior.out.predicted_image_embedding"])
    assert_close(to_clip_space(out), r["fwd.prior.out.post_process_latents"])


def test_prior_forward_python_int_timestep_batch_1(models, refs):
    r = refs("stage1")
    with torch.no_grad():
        out = models("s1")(
            r["fwd.prior_b1.in.hidden_states"], 500, r["fwd.prior_b1.in.proj_embedding"],
            r["fwd.prior_b1.in.encoder_hidden_states"], r["fwd.prior_b1.in.encoder_hidden_states1"],
        )
    assert_close(out, r["fwd.prior_b1.out.predicted_image_embedding"])


def test_paper_stage2_forward(models, refs):
    r = refs("stage2_paper")
    m = models("s2_paper")
    with torch.no_grad():
        tokens = m.image_proj(r["fwd.s2p.in.dino_tokens"])
        pose = m.pose_proj(im.to_model_range(r["fwd.s2p.in.pose_image_u8"]))
        prior_token = r["fwd.s2p.in.prior_token"]
        out = m(r["fwd.s2p.in.sample"], r["fwd.s2p.in.timestep"], torch.cat([tokens, prior_token], 1), pose, prior_token)
        # Row 0 is the paper pipeline's unconditional branch (zero context, zero class label), row 1 the
        # conditional one; both use sample 1's conditions and the first timestep.
        t0 = r["fwd.s2p.in.timestep"][:1].repeat(2)
        ctx = torch.cat([tokens, prior_token], 1)[1:]
        cfg_out = m(
            r["fwd.s2p.in.sample"], t0, torch.cat([torch.zeros_like(ctx), ctx]), pose[1:].repeat(2, 1, 1, 1),
            torch.cat([torch.zeros_like(prior_token[1:]), prior_token[1:]]),
        )
    assert_close(tokens, r["fwd.s2p.image_proj_model_p"])
    assert_close(pose, r["fwd.s2p.pose_feat"])
    assert_close(out, r["fwd.s2p.out.noise_pred"])
    assert_close(cfg_out, r["fwd.s2p_cfg.out.noise_pred"])


def test_demo_stage2_forward(models, refs):
    r = refs("stage2_demo")
    m = models("s2_demo")
    with torch.no_grad():
        tokens = m.image_proj(r["fwd.demo.in.dino_tokens"])
        zeros = m.image_proj(torch.zeros(1, 1, r["fwd.demo.in.dino_tokens"].shape[-1]))
        pose = m.pose_proj(im.to_model_range(r["fwd.demo.in.pose_image_u8"]))
        out = m(r["fwd.demo.in.sample"], r["fwd.demo.in.timestep"], tokens, pose)  # pose batch 1, broadcast
    assert_close(tokens, r["fwd.demo.image_proj_model"])
    assert_close(zeros, r["fwd.demo.image_proj_model_of_zeros"])
    assert_close(pose, r["fwd.demo.pose_feat"])
    assert_close(out, r["fwd.demo.out.noise_pred"])


def test_stage3_forward(models, refs):
    r = refs("stage3")
    m = models("s3")
    with torch.no_grad():
        tokens = m.image_proj(r["fwd.s3.in.dino_tokens"])
        out = m(r["fwd.s3.in.sample"], r["fwd.s3.in.timestep"], tokens)
    assert_close(tokens, r["fwd.s3.image_proj_model_p"])
    assert_close(out, r["fwd.s3.out.noise_pred"])


def test_vae_forward(models, refs):
    r = refs("preprocess")
    vae = models("vae")
    x = im.to_model_range(r["fwd.vae.in.image_u8"])
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        dec = vae.decode(r["fwd.vae.dec.in.z"]).sample
    assert_close(dist.mean, r["fwd.vae.enc.mean"])
    assert_close(dist.std, r["fwd.vae.enc.std"])
    assert_close(dec, r["fwd.vae.dec.out"])
    # Our encode helper: mean + std * noise, then x scaling factor.
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(7))
    z = vae_ops.encode(vae, x, torch.Generator().manual_seed(7))
    assert_close(z, (r["fwd.vae.enc.mean"] + r["fwd.vae.enc.std"] * noise) * 0.18215)
