"""The chained pipeline: it wires the stage functions and computes the source's DINOv2 tokens once."""

import pytest
import torch

from pcdms_core.errors import InputError
from pcdms_core.stages.inpaint import sample_inpaint
from pcdms_core.pipeline import PCDMsPipeline, StageSettings
from pcdms_core.pose.keypoints import load_pose, pose_vector, render_pose
from pcdms_core.stages.prior import sample_prior
from pcdms_core.stages.refine import sample_refine
from pcdms_core import images as im
from helpers import PARITY


@pytest.fixture(scope="module")
def pipe(models):
    return PCDMsPipeline(
        inpaint=models("s2_paper"), vae=models("vae"), dino=models("dinov2"), prior=models("s1"),
        clip=models("clip_vision"), refine=models("s3"),
    )


def _poses():
    return load_pose(PARITY / "inputs/pose_a.json"), load_pose(PARITY / "inputs/pose_t1.json")


def test_pipeline_is_the_stages_in_a_row(pipe, inputs, refs):
    src = inputs("src_a.png")
    sp, tp = _poses()
    settings = dict(prior_settings=StageSettings(steps=3), inpaint_settings=StageSettings(steps=3),
                    refine_settings=StageSettings(steps=2))
    dino_calls = []
    handle = pipe.dino.register_forward_hook(lambda m, a, o: dino_calls.append(1))
    try:
        result = pipe(src, sp, tp, size=(64, 64), prior_size=(512, 512), seed=11, **settings)
    finally:
        handle.remove()
    assert len(dino_calls) == 1  # encoded once, used by stages 2 and 3

    # The same, by hand. The prior reads CLIP at 512 (the official stage-1 stretch): the parity set's s_embed.
    clip_embed = pipe.clip.encode(src, (512, 512))
    torch.testing.assert_close(clip_embed[:, None], refs("stage1")["run.inputs.s_embed"], atol=1e-5, rtol=1e-4)
    emb = sample_prior(pipe.prior, clip_embed, pose_vector(sp), pose_vector(tp), steps=3, generator=11)
    tokens = pipe.dino.encode(src, (64, 64))
    coarse = sample_inpaint(pipe.inpaint, pipe.vae, src, render_pose(sp, (64, 64)), render_pose(tp, (64, 64)),
                            tokens, emb, size=(64, 64), steps=3, generator=11).target
    refined = sample_refine(pipe.refine, pipe.vae, im.to_uint8(coarse), tokens, size=(64, 64), steps=2,
                            generator=11).images
    assert torch.equal(result.prior_embedding, emb)
    assert torch.equal(result.coarse, coarse)
    assert torch.equal(result.images, refined)
    assert result.images.shape == (1, 3, 64, 64)


def test_stage_callbacks_are_named(pipe, inputs):
    seen = []
    sp, tp = _poses()
    pipe(inputs("src_a.png"), sp, tp, size=(64, 64), seed=1, callback=lambda stage, info: seen.append((stage, info.step)),
         prior_settings=StageSettings(steps=2), inpaint_settings=StageSettings(steps=2), refine_settings=StageSettings(steps=2))
    assert seen == [("prior", 0), ("prior", 1), ("inpaint", 0), ("inpaint", 1), ("refine", 0), ("refine", 1)]


def test_several_images_and_no_refine(pipe, inputs):
    sp, tp = _poses()
    result = pipe(inputs("src_a.png"), sp, tp, size=(64, 64), seed=1, num_images=2, use_refine=False,
                  prior_settings=StageSettings(steps=2), inpaint_settings=StageSettings(steps=2))
    assert result.images.shape == (2, 3, 64, 64)
    assert torch.equal(result.images, result.coarse)


def test_demo_pipeline_takes_a_skeleton_image(models, inputs):
    demo = PCDMsPipeline(inpaint=models("s2_demo"), vae=models("vae"), dino=models("dinov2"))
    result = demo(inputs("src_b.png"), load_pose(PARITY / "inputs/pose_b.json"), inputs("pose_t2.png"),
                  size=(64, 64), seed=3, inpaint_settings=StageSettings(steps=2))
    assert result.images.shape == (1, 3, 64, 64) and result.prior_embedding is None


def test_paper_pipeline_needs_the_prior_and_keypoints(models, pipe, inputs):
    no_prior = PCDMsPipeline(inpaint=models("s2_paper"), vae=models("vae"), dino=models("dinov2"))
    sp, tp = _poses()
    with pytest.raises(InputError, match="needs the stage-1 prior"):
        no_prior(inputs("src_a.png"), sp, tp, size=(64, 64))
    with pytest.raises(InputError, match="keypoint poses"):
        pipe(inputs("src_a.png"), sp, inputs("pose_t1.png"), size=(64, 64))


def test_lazy_pipeline_loads_each_stage_when_needed_and_gives_the_same_images(tmp_path, inputs, monkeypatch):
    from pcdms_core.loading.checkpoints import convert_checkpoint
    from pcdms_core.pipeline import Lazy

    from helpers import CONFIGS

    files = {name: convert_checkpoint(PARITY / "checkpoints" / f"{fixture}.pt", tmp_path / f"{fixture}.safetensors",
                                      config=CONFIGS[fixture])
             for name, fixture in (("prior", "s1"), ("inpaint", "s2_paper"), ("refine", "s3"))}
    common = dict(vae=PARITY / "vae", dino=PARITY / "dinov2", clip=PARITY / "clip_vision", **files)
    eager = PCDMsPipeline.from_files(**common)
    lazy = PCDMsPipeline.from_files(**common, lazy=True)
    assert isinstance(lazy.inpaint, Lazy) and lazy.uses_prior
    import weakref

    loads, alive_at_load = [], []
    refs: list = []

    def load(f, n):
        # which models of earlier stages are still in memory when this one loads (the VAE is shared by 2 and 3)
        alive_at_load.append((n, sorted(m for m, r in refs if r() is not None and m != "vae")))
        loads.append(n)
        model = f()
        refs.append((n, weakref.ref(model)))
        return model

    for name in ("prior", "inpaint", "refine", "dino", "clip", "vae"):
        slot = getattr(lazy, name)
        slot._load = (lambda f=slot._load, n=name: load(f, n))
    sp, tp = _poses()
    kw = dict(size=(64, 64), seed=2, prior_settings=StageSettings(steps=2), inpaint_settings=StageSettings(steps=2),
              refine_settings=StageSettings(steps=2))
    a = eager(inputs("src_a.png"), sp, tp, **kw)
    from pcdms_core.networks import vae as vae_ops
    # which UNets are in memory while the VAE encodes or decodes (its activations are the largest of a stage)
    vae_calls = []
    for op in ("encode", "decode"):
        original = getattr(vae_ops, op)

        def spy(*args, _f=original, _op=op, **kwargs):
            vae_calls.append((_op, sorted(m for m, r in refs if r() is not None and m in ("inpaint", "refine"))))
            return _f(*args, **kwargs)

        monkeypatch.setattr(vae_ops, op, spy)
    b = lazy(inputs("src_a.png"), sp, tp, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.coarse, b.coarse)
    assert loads == ["dino", "clip", "prior", "vae", "inpaint", "refine"]  # one stage at a time, one VAE
    # each stage's models are freed before the next stage's first model loads
    assert all(alive == [] for n, alive in alive_at_load if n != "vae"), alive_at_load
    # encode, decode (stage 2), encode, decode (stage 3), none beside a UNet
    assert vae_calls == [("encode", []), ("decode", []), ("encode", []), ("decode", [])], vae_calls
