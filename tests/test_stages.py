"""Stage behaviour beyond the parity runs: seeds, batches, callbacks and cancelling, schedulers, bad input."""

import pytest
import torch
from PIL import Image

from pcdms_core.errors import InputError
from pcdms_core.stages.inpaint import sample_inpaint
from pcdms_core.stages.prior import sample_prior
from pcdms_core.stages.refine import sample_refine
from pcdms_core.stages.loop import UNET_SCHEDULERS, make_scheduler
from pcdms_core.seeding import as_generator


@pytest.fixture(scope="module")
def paper_inputs(models, inputs, refs):
    src = inputs("src_a.png")
    return dict(
        model=models("s2_paper"), vae=models("vae"), source=src, source_pose=inputs("pose_a.png"),
        target_pose=inputs("pose_t1.png"), source_tokens=models("dinov2").encode(src, (64, 64)),
        prior_embedding=refs("stage2_paper")["run.inputs.pred_t_img_embed"],
    )


def _inpaint(p, **kw):
    kw.setdefault("size", (64, 64))
    kw.setdefault("steps", 3)
    return sample_inpaint(p["model"], p["vae"], p["source"], p["source_pose"], p["target_pose"],
                          p["source_tokens"], p["prior_embedding"], **kw)


def test_same_seed_same_image_other_seed_other_image(paper_inputs):
    a = _inpaint(paper_inputs, generator=7).target
    b = _inpaint(paper_inputs, generator=torch.Generator().manual_seed(7)).target
    c = _inpaint(paper_inputs, generator=8).target
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_batch_of_images_per_source(paper_inputs):
    res = _inpaint(paper_inputs, generator=1, num_images=3)
    assert res.target.shape == (3, 3, 64, 64) and res.canvas.shape == (3, 3, 64, 128)
    assert (res.target[0] - res.target[1]).abs().max() > 1e-3
    # The first of a batch is not the image of a single run (one noise tensor is drawn for the batch).
    single = _inpaint(paper_inputs, generator=1)
    assert single.target.shape == (1, 3, 64, 64)


def test_batch_of_sources(paper_inputs, models, inputs):
    import torch as t

    from pcdms_core import images as im
    srcs = im.as_uint8_batch([inputs("src_a.png"), inputs("src_a.png").transpose(0)])  # mirrored second person
    tokens = models("dinov2").encode(srcs, (64, 64))
    res = sample_inpaint(
        paper_inputs["model"], paper_inputs["vae"], srcs, paper_inputs["source_pose"], paper_inputs["target_pose"],
        tokens, paper_inputs["prior_embedding"].expand(2, -1, -1), size=(64, 64), steps=2, generator=3, num_images=2,
    )
    assert res.target.shape == (4, 3, 64, 64)
    assert t.isfinite(res.target).all()


def test_guidance_off_runs_one_branch(paper_inputs):
    calls = []
    handle = paper_inputs["model"].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        _inpaint(paper_inputs, generator=1, guidance_scale=1.0, num_images=2)
        _inpaint(paper_inputs, generator=1, guidance_scale=2.5, num_images=2)
    finally:
        handle.remove()
    assert calls[:3] == [2, 2, 2] and calls[3:] == [4, 4, 4]


def test_callback_sees_every_step_and_can_cancel(paper_inputs):
    seen = []

    class Cancelled(Exception):
        pass

    def cb(info):
        seen.append((info.step, info.total, info.timestep))
        assert info.denoised is not None and info.denoised.shape == info.latents.shape
        if info.step == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        _inpaint(paper_inputs, generator=1, steps=5, callback=cb)
    assert seen == [(0, 5, 999), (1, 5, 799)]


@pytest.mark.parametrize("name", UNET_SCHEDULERS)
def test_every_scheduler_runs(paper_inputs, name):
    res = _inpaint(paper_inputs, generator=1, scheduler=name, steps=3)
    assert torch.isfinite(res.target).all() and res.target.shape == (1, 3, 64, 64)


def test_prior_guidance_and_batches(models, refs):
    r = refs("stage1")
    pre = refs("preprocess")
    args = (models("s1"), r["run.inputs.s_embed"], pre["pre.pose.pose_a.stage1_vec"], pre["pre.pose.pose_t1.stage1_vec"])
    plain = sample_prior(*args, steps=4, generator=5)
    guided = sample_prior(*args, steps=4, generator=5, guidance_scale=3.0)
    batch = sample_prior(*args, steps=4, generator=5, num_images=3)
    assert plain.shape == (1, 1024) and batch.shape == (3, 1024)
    assert (plain - guided).abs().max() > 1e-3
    assert torch.equal(sample_prior(*args, steps=4, generator=5), plain)
    for name in ("ddim", "ddpm"):
        assert torch.isfinite(sample_prior(*args, steps=4, generator=5, scheduler=name)).all()


def test_refine_guidance_and_batches(models, inputs):
    tokens = models("dinov2").encode(inputs("src_a.png"), (64, 64))
    coarse = inputs("../refs/s3_input_coarse.png")
    res = sample_refine(models("s3"), models("vae"), coarse, tokens, size=(64, 64), steps=3, generator=2,
                        guidance_scale=2.0, num_images=2)
    assert res.images.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("name", UNET_SCHEDULERS)
def test_refine_strength_runs_the_last_steps_from_the_noised_coarse_image(models, inputs, name):
    from pcdms_core.stages.refine import encode_coarse

    tokens = models("dinov2").encode(inputs("src_a.png"), (64, 64))
    coarse = inputs("../refs/s3_input_coarse.png")
    args = (models("s3"), models("vae"), coarse, tokens)
    kw = dict(size=(64, 64), steps=10, generator=3, scheduler=name, decode=False)
    full_seen, part_seen = [], []
    full = sample_refine(*args, **kw, callback=full_seen.append)
    part = sample_refine(*args, **kw, strength=0.3, callback=part_seen.append)
    sched = make_scheduler(name)
    sched.set_timesteps(10)
    # the last three of the ten steps (Heun, a second-order solver, lists its timesteps twice, as diffusers counts)
    assert [i.timestep for i in full_seen] == [int(t) for t in sched.timesteps]
    assert [i.timestep for i in part_seen] == [int(t) for t in sched.timesteps[7 * sched.order:]]
    assert torch.isfinite(part.latents).all()
    # it started from the coarse image's latents (the same first random draw), so it ends much nearer them
    start = encode_coarse(models("vae"), coarse, (64, 64), 3)
    near, far = (part.latents - start).abs().mean(), (full.latents - start).abs().mean()
    assert near < 0.5 * far, (near, far)
    assert torch.equal(sample_refine(*args, **kw, strength=1.0).latents, full.latents)  # 1 is the official way


def test_noised_start_is_the_schedule_noising_at_the_first_kept_step():
    from pcdms_core.stages.loop import noised_start, start_part_way

    sched = make_scheduler("ddim")
    sched.set_timesteps(20)
    start = start_part_way(sched, 20, 0.25)
    assert start == 15 and int(sched.timesteps[start]) == 201  # leading spacing: 951, 901, ... 201, ... 1
    clean, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    a = sched.alphas_cumprod[201]
    assert torch.allclose(noised_start(sched, clean, start, None, noise), a.sqrt() * clean + (1 - a).sqrt() * noise,
                          atol=1e-6)
    with pytest.raises(InputError, match="initial latents have shape"):
        noised_start(sched, clean, start, None, noise[:1])


# --- bad input -----------------------------------------------------------------------------------------------------

def test_size_must_fit_the_models(paper_inputs):
    with pytest.raises(InputError, match="multiples of 8"):
        _inpaint(paper_inputs, size=(60, 64))


def test_prior_embedding_rules(paper_inputs, models):
    with pytest.raises(InputError, match="needs the prior's target embedding"):
        _inpaint({**paper_inputs, "prior_embedding": None})
    with pytest.raises(InputError, match="expects 1024"):
        _inpaint({**paper_inputs, "prior_embedding": torch.zeros(1, 77)})
    demo = {**paper_inputs, "model": models("s2_demo")}
    with pytest.raises(InputError, match="takes no prior embedding"):
        _inpaint(demo)


def test_wrong_encoder_features_are_named(paper_inputs):
    with pytest.raises(InputError, match="DINOv2-giant"):
        _inpaint({**paper_inputs, "source_tokens": torch.zeros(1, 257, 1536)})


def test_pose_batches_broadcast_or_are_refused(paper_inputs):
    """One source with two target poses gives two images (the source, its tokens and the embedding are shared);
    two sources with three target poses cannot be paired and are refused before any work."""
    from pcdms_core import images as im
    two = im.as_uint8_batch([paper_inputs["target_pose"]] * 2)
    res = _inpaint({**paper_inputs, "target_pose": two})
    assert res.target.shape[0] == 2
    three = im.as_uint8_batch([paper_inputs["target_pose"]] * 3)
    sources = im.as_uint8_batch([paper_inputs["source"]] * 2)
    with pytest.raises(InputError, match="batch sizes do not match .*target poses 3"):
        _inpaint({**paper_inputs, "source": sources, "target_pose": three})


def test_sampler_argument_errors(paper_inputs, models, refs):
    with pytest.raises(InputError, match="steps must be a positive integer"):
        _inpaint(paper_inputs, steps=0)
    with pytest.raises(InputError, match="unknown scheduler 'nope'"):
        _inpaint(paper_inputs, scheduler="nope")
    with pytest.raises(InputError, match="initial latents have shape"):
        _inpaint(paper_inputs, latents=torch.zeros(1, 4, 8, 8))
    with pytest.raises(InputError, match="seed must be an int"):
        as_generator("42")
    tokens = models("dinov2").encode(Image.new("RGB", (64, 64)), (64, 64))
    for strength, message in ((0.0, r"strength must be a number in \(0, 1\]"), (1.5, "strength must be"),
                              (0.04, "strength 0.04 of 10 steps leaves no step to run")):
        with pytest.raises(InputError, match=message):
            sample_refine(models("s3"), models("vae"), Image.new("RGB", (64, 64)), tokens, size=(64, 64), steps=10,
                          strength=strength)
    with pytest.raises(InputError, match="unknown scheduler 'unipc' for the prior"):
        make_scheduler("unipc", "prior")
    with pytest.raises(InputError, match=r"\[B, 36\] pose vector"):
        sample_prior(models("s1"), refs("stage1")["run.inputs.s_embed"], torch.zeros(1, 34), torch.zeros(1, 36))
    pose = torch.zeros(1, 36)
    with pytest.raises(InputError, match="UnCLIP scheduler needs at least 2 steps"):
        sample_prior(models("s1"), refs("stage1")["run.inputs.s_embed"], pose, pose, steps=1)
    one_step = sample_prior(models("s1"), refs("stage1")["run.inputs.s_embed"], pose, pose, steps=1, scheduler="ddim")
    assert one_step.shape == (1, 1024) and torch.isfinite(one_step).all()


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf"), "2", True])
def test_guidance_that_is_not_a_finite_number_of_0_or_more_is_refused(paper_inputs, models, refs, bad):
    """NaN or negative guidance used to mean "no guidance", infinite guidance an all-NaN image."""
    with pytest.raises(InputError, match="guidance scale must be a finite number"):
        _inpaint(paper_inputs, guidance_scale=bad)
    with pytest.raises(InputError, match="guidance rescale must be a finite number"):
        _inpaint(paper_inputs, guidance_rescale=bad)
    with pytest.raises(InputError, match="guidance scale must be a finite number"):
        sample_prior(models("s1"), torch.zeros(1, 1024), torch.zeros(1, 36), torch.zeros(1, 36), guidance_scale=bad)
    with pytest.raises(InputError, match="guidance"):
        sample_refine(models("s3"), models("vae"), paper_inputs["source"], paper_inputs["source_tokens"],
                      size=(64, 64), steps=2, guidance_scale=2.0, guidance_rescale=bad)


def test_seeds_outside_what_comfyui_gives_are_refused():
    from pcdms_core.seeding import MAX_SEED, as_generator

    assert as_generator(MAX_SEED).initial_seed() == MAX_SEED
    assert not torch.equal(torch.randn(4, generator=as_generator(0)), torch.randn(4, generator=as_generator(MAX_SEED)))
    for bad in (MAX_SEED + 1, -1, 2**70):
        with pytest.raises(InputError, match="seed must be a whole number from 0 to 2\\*\\*64 - 1"):
            as_generator(bad)


def test_zero_steps_is_refused_for_every_stage(models):
    with pytest.raises(InputError, match="steps must be a positive integer"):
        sample_prior(models("s1"), torch.zeros(1, 1024), torch.zeros(1, 36), torch.zeros(1, 36), steps=0)
