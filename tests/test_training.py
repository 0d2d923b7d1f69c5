"""The synthetic set, short training runs (loss falls, checkpoints, resume, export), and the metrics."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from pcdms_core import bundled
from pcdms_core.train import demo_models as demo
from pcdms_core.train import metrics
from pcdms_core.loading.checkpoints import load_checkpoint
from pcdms_core.loading.encoders import load_image_encoder
from pcdms_core.train.synthetic import SyntheticPairs
from pcdms_core.train.training import TrainConfig, losses, train, write_stand_in_encoders
from pcdms_core.loading.vae import load_vae, save_vae


def test_synthetic_pairs_are_deterministic_and_consistent():
    a, b = SyntheticPairs(seed=3)[5], SyntheticPairs(seed=3)[5]
    assert torch.equal(a.source, b.source) and torch.equal(a.target, b.target)
    assert not torch.equal(SyntheticPairs(seed=4)[5].source, a.source)
    assert a.source.shape == (3, 128, 128) and a.source.dtype == torch.uint8
    # the keypoints lie on the drawn person: visible joints fall inside (or next to) the body mask
    mask = a.target_mask.numpy()
    px = (a.target_pose.xy * 128).astype(int).clip(0, 127)
    on_body = [mask[max(0, y - 2):y + 3, max(0, x - 2):x + 3].any() for (x, y), v in zip(px, a.target_pose.visible) if v]
    assert np.mean(on_body) > 0.9
    assert a.target_pose.num_visible >= 12


def test_synthetic_variety():
    pairs = SyntheticPairs(seed=0)
    kinds = {pairs[i].meta["target_kind"] for i in range(60)}
    views = {pairs[i].meta["target_view"] for i in range(60)}
    assert len(kinds) >= 5 and {"front", "back", "side"} <= views
    hidden = [pairs[i].target_pose.num_visible < 18 for i in range(60)]
    assert any(hidden)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    d = tmp_path_factory.mktemp("frozen")
    clip, dino = write_stand_in_encoders(d / "clip.safetensors", d / "dino.safetensors")
    torch.manual_seed(0)
    vae = save_vae(demo.build_vae(), d / "vae.safetensors")
    return {"clip": str(clip), "dino": str(dino), "vae": str(vae)}


def test_stand_in_encoders_load_from_their_files(frozen):
    clip = load_image_encoder(frozen["clip"], "clip")
    assert clip.output_dim == demo.EMBED_DIM
    again = demo.build_clip()
    x = torch.rand(2, 3, 224, 224)
    torch.testing.assert_close(clip(x), again(x), atol=2e-3, rtol=2e-3)  # saved in fp16
    assert load_image_encoder(frozen["dino"], "dinov2").output_dim == demo.TOKEN_DIM


def test_prior_training_loss_falls_and_resumes(tmp_path, frozen):
    cfg = TrainConfig(stage="prior", out=str(tmp_path / "prior"), steps=40, batch_size=8, lr=1e-3, save_every=20,
                      clip=frozen["clip"], log_every=1)
    path = train(cfg, progress=False)
    log = losses(cfg.out)
    assert [r["step"] for r in log] == list(range(40))
    first, last = np.mean([r["loss"] for r in log[:5]]), np.mean([r["loss"] for r in log[-5:]])
    assert last < 0.7 * first, (first, last)
    prior = load_checkpoint(path, expect="prior")
    assert prior.config.embedding_dim == demo.EMBED_DIM and prior.config.embed_std != 0.415
    # resume: the run continues from its last checkpoint to the new step count
    cfg.steps = 45
    train(cfg, progress=False)
    assert [r["step"] for r in losses(cfg.out)][40:] == [40, 41, 42, 43, 44]
    assert sorted(p.name for p in (tmp_path / "prior" / "checkpoints").iterdir()) == ["step_40", "step_45"]


def test_ema_is_exported_saved_and_resumed(tmp_path, frozen):
    from safetensors.torch import load_file

    cfg = TrainConfig(stage="prior", out=str(tmp_path / "p"), steps=6, batch_size=4, lr=1e-2, save_every=3,
                      clip=frozen["clip"], ema=0.5)
    path = train(cfg, progress=False)
    ckpt = tmp_path / "p" / "checkpoints"
    saved = load_file(str(ckpt / "step_6" / "ema.safetensors"))
    assert int(saved["updates"]) == 6
    raw = load_file(str(ckpt / "step_6" / "model.safetensors"))
    exported = load_checkpoint(path, expect="prior").state_dict()
    # the export is the average (decay min(0.5, (1+n)/(10+n)) = 0.5 here), not the last raw weights
    name = "proj_in.weight"
    index = [n for n, p in load_checkpoint(path, expect="prior").named_parameters()].index(name)
    torch.testing.assert_close(exported[name], saved[str(index)])
    assert not torch.allclose(exported[name], raw[name])
    cfg.steps = 8
    train(cfg, progress=False)
    assert int(load_file(str(ckpt / "step_8" / "ema.safetensors"))["updates"]) == 8


@pytest.mark.parametrize("stage", ["prior", "inpaint"])
def test_the_same_seed_gives_the_same_run(tmp_path, frozen, stage):
    """A run started from scratch is decided by its seed: its initial weights too, not only its data and draws.
    The caller's global random state is left as it was."""
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = TrainConfig(stage=stage, out=str(tmp_path / name), steps=2, batch_size=2, lr=1e-3, save_every=10,
                          seed=seed, log_every=1, **frozen)
        torch.manual_seed(123)
        expected = torch.rand(4)
        torch.manual_seed(123)
        path = train(cfg, progress=False)
        assert torch.equal(torch.rand(4), expected), "the caller's global random state changed"
        runs[name] = ([r["loss"] for r in losses(cfg.out)], load_checkpoint(path, expect=stage).state_dict())
    (loss_a, a), (loss_b, b), (loss_c, c) = runs.values()
    assert loss_a == loss_b and len(loss_a) == 2
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loss_c != loss_a and not all(torch.equal(a[k], c[k]) for k in a)


def test_inpaint_training_runs_and_exports(tmp_path, frozen):
    cfg = TrainConfig(stage="inpaint", out=str(tmp_path / "s2"), steps=2, batch_size=2, save_every=10, **frozen)
    path = train(cfg, progress=False)
    model = load_checkpoint(path, expect="inpaint")
    assert model.variant == "paper" and model.unet.config.in_channels == 9
    assert json.loads((tmp_path / "s2" / "train_config.json").read_text())["stage"] == "inpaint"


class NoData:
    """Data for --pool tests whose pairs are all kept already: drawing one again fails the test."""

    def batch(self, indices):
        raise AssertionError(f"pairs {indices} drawn again")


def test_inpaint_pool_keeps_encodings_and_steps_as_on_fresh_pairs(tmp_path, frozen, monkeypatch):
    from pcdms_core.networks import vae as vae_ops
    from pcdms_core.train.training import InpaintStage, _data

    for variant in ("paper", "noprior"):
        cfg = TrainConfig(stage="inpaint", out=str(tmp_path / "x"), pool=10, variant=variant, drop_rate=0.5, **frozen)
        stage, data = InpaintStage(cfg, "cpu"), _data(cfg)
        torch.nn.init.normal_(stage.model.pose_proj.conv_out.weight, std=0.1)  # let the poses count
        # two processes: each keeps its own half of the pool, visits all of it once per pass, in a new order
        # each pass
        for rank in (0, 1):
            seen, again = stage.indices(0, 5, rank, 2), stage.indices(1, 5, rank, 2)
            assert sorted(seen) == sorted(again) == list(range(rank, 10, 2)) and seen != again
            assert stage.indices(0, 7, rank, 2) == seen + again[:2]  # a batch may run into the next pass
        # a step on kept pairs is the step on those pairs freshly rendered: the same draws in the same order
        # (posterior noise, condition dropout: a dropped image's encoding is the encoder's output for zeros)
        indices = [3, 7, 3, 0, 9, 1]
        with torch.no_grad():
            fresh = [stage.loss(stage.model, data.batch(indices), torch.Generator().manual_seed(s)) for s in range(4)]
            kept = [stage.step_loss(stage.model, data, indices, torch.Generator().manual_seed(s)) for s in range(4)]
        assert sorted(stage._kept) == [0, 1, 3, 7, 9]
        torch.testing.assert_close(torch.stack(kept), torch.stack(fresh), rtol=1e-5, atol=1e-6)
        assert len(set(round(float(v), 6) for v in fresh)) == 4  # the seeds (and so the dropout) differ
        # kept pairs are neither drawn nor encoded again
        def encoded_again(*args):
            raise AssertionError("encoded again")

        with monkeypatch.context() as patch:
            patch.setattr(vae_ops, "encode_posterior", encoded_again)
            patch.setattr(stage, "dino", encoded_again)
            patch.setattr(stage, "clip", encoded_again if stage.clip is not None else None)
            with torch.no_grad():
                again = stage.step_loss(stage.model, NoData(), [9, 0, 3], torch.Generator().manual_seed(0))
        assert torch.isfinite(again)
    path = train(TrainConfig(stage="inpaint", out=str(tmp_path / "s2"), steps=3, batch_size=2, pool=4, save_every=10,
                             **frozen), progress=False)
    assert load_checkpoint(path, expect="inpaint").variant == "paper"
    for bad, match in ((dict(stage="refine", pool=8), "inpainting and the VAE only"), (dict(stage="inpaint", pool=-1), "number of pairs")):
        with pytest.raises(Exception, match=match):
            TrainConfig(out=str(tmp_path / "x"), **bad)
    with pytest.raises(Exception, match="smaller than the 2 training processes"):
        InpaintStage(TrainConfig(stage="inpaint", out=str(tmp_path / "x"), pool=1, **frozen), "cpu").indices(0, 2, 0, 2)


def test_stage_2_can_start_from_the_other_variant():
    from pcdms_core.train.training import inpaint_as_variant

    torch.manual_seed(2)
    paper = demo.build_inpaint("paper")
    as_demo = inpaint_as_variant(paper, "noprior")
    assert as_demo.variant == "noprior" and as_demo.unet.class_embedding is None
    theirs = paper.state_dict()
    for name, value in as_demo.state_dict().items():
        torch.testing.assert_close(value, theirs[name.replace("image_proj_model.", "image_proj_model_p.")], rtol=0, atol=0)
    # demo -> paper: a class embedding that adds nothing at first, so it starts as the demo model ran
    torch.manual_seed(3)
    small = demo.build_inpaint("noprior")
    torch.nn.init.normal_(small.pose_proj.conv_out.weight, std=0.05)
    as_paper = inpaint_as_variant(small, "paper")
    assert as_paper.variant == "paper" and as_paper.unet.class_embedding is not None
    assert inpaint_as_variant(small, "noprior") is small
    x = torch.randn(2, 9, 16, 32)
    tokens, emb = torch.randn(2, 5, demo.TOKEN_DIM), torch.randn(2, demo.EMBED_DIM)
    poses = torch.rand(2, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        before = small(x, torch.tensor([10, 900]), small.context(tokens), small.pose_proj(poses), None)
        # the embedding given to the class embedding changes nothing yet (the prior's token in the context will)
        after = as_paper(x, torch.tensor([10, 900]), small.context(tokens), as_paper.pose_proj(poses), emb)
        other = as_paper(x, torch.tensor([10, 900]), small.context(tokens), as_paper.pose_proj(poses), -3 * emb)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(other, before, rtol=0, atol=0)
    assert as_paper.context(tokens, emb).shape[1] == tokens.shape[1] + 1


def test_training_in_two_processes_on_a_cpu(tmp_path, frozen):
    """torchrun --nproc_per_node 2 on a machine without CUDA: data-parallel on the CPU, each process with its own
    share of the pool, one model and one set of checkpoints."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pcdms_core", "train", "inpaint", "--out", str(out), "--steps", "3", "--batch-size", "2",
           "--pool", "6", "--save-every", "2", "--vae", frozen["vae"], "--clip", frozen["clip"], "--dino", frozen["dino"]]
    run = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["step"] for r in losses(out)] == [0, 2]  # first and last step, logged once, by the main process
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_3"]
    assert load_checkpoint(out / "inpaint.safetensors", expect="inpaint").variant == "paper"
    # two processes ran: accelerate saved each one's random state
    assert sorted(p.name for p in (out / "checkpoints" / "step_3").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    # the VAE too: its pass (encode, draw, decode) runs through the data-parallel wrapper's forward
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pcdms_core",
           "train", "vae", "--out", str(tmp_path / "vae"), "--steps", "2", "--batch-size", "1", "--save-every", "10",
           "--pool", "4"]
    run = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert load_vae(tmp_path / "vae" / "vae.safetensors").config.latent_channels == demo.build_vae().config.latent_channels


def test_refining_can_start_from_a_stage_2_model(tmp_path, frozen):
    from pcdms_core.train.training import refine_from_inpaint

    for variant in ("paper", "noprior"):
        torch.manual_seed(1)
        inpaint = demo.build_inpaint(variant)
        refine = refine_from_inpaint(inpaint)
        assert refine.unet.config.in_channels == 8 and refine.unet.class_embedding is None
        weights = inpaint.state_dict()
        for name, value in refine.unet.state_dict().items():
            if name == "conv_in.weight":  # noisy latents, then the coarse latents where stage 2 had the source's
                w = weights["unet.conv_in.weight"]
                torch.testing.assert_close(value, torch.cat([w[:, :4], w[:, 5:9]], 1), rtol=0, atol=0)
            else:
                torch.testing.assert_close(value, weights["unet." + name], rtol=0, atol=0)
        for name, value in refine.image_proj.state_dict().items():
            torch.testing.assert_close(value, inpaint.image_proj.state_dict()[name], rtol=0, atol=0)
    # through train(): --init with a stage-2 file starts refining from it
    from pcdms_core.loading.checkpoints import save_checkpoint

    save_checkpoint(inpaint, tmp_path / "s2.safetensors")
    cached = torch.randint(0, 256, (3, 3, *bundled.SIZE[::-1]), dtype=torch.uint8)
    torch.save({"images": cached}, tmp_path / "coarse.pt")
    cfg = TrainConfig(stage="refine", out=str(tmp_path / "s3"), steps=1, batch_size=2, lr=1e-12, save_every=10,
                      coarse=str(tmp_path / "coarse.pt"), init=str(tmp_path / "s2.safetensors"), **frozen)
    trained = load_checkpoint(train(cfg, progress=False), expect="refine")
    torch.testing.assert_close(trained.unet.up_blocks[0].resnets[0].conv1.weight,
                               inpaint.unet.up_blocks[0].resnets[0].conv1.weight.half().float(), rtol=0, atol=1e-3)


def test_refine_training_on_stage2_outputs_with_augmentation(tmp_path, frozen):
    from pcdms_core.train.training import make_coarse

    coarse = make_coarse(bundled.demo_file("inpaint"), tmp_path / "coarse.pt", count=3, steps=2, batch_size=2,
                         progress=False, **frozen)
    images = torch.load(coarse, weights_only=True)["images"]
    assert images.shape == (3, 3, *bundled.SIZE[::-1]) and images.dtype == torch.uint8
    cfg = TrainConfig(stage="refine", out=str(tmp_path / "s3"), steps=2, batch_size=2, save_every=10,
                      coarse=str(coarse), augment=True, **frozen)
    model = load_checkpoint(train(cfg, progress=False), expect="refine")
    assert model.unet.config.in_channels == 8
    assert json.loads((tmp_path / "s3" / "train_config.json").read_text())["augment"] is True
    with pytest.raises(Exception, match="refining only"):
        TrainConfig(stage="inpaint", out=str(tmp_path / "x"), augment=True)


def test_make_coarse_command_uses_the_frozen_models_it_is_given(tmp_path, frozen):
    """`make-coarse --vae/--clip/--dino`: a stage 2 trained on another VAE gets its coarse images made with it."""
    from pcdms_core.cli import main

    args = ["make-coarse", "--inpaint", str(bundled.demo_file("inpaint")), "--count", "2", "--steps", "1",
            "--batch-size", "2"]
    assert main(args + ["--out", str(tmp_path / "given.pt")] + [f"--{k}={v}" for k, v in frozen.items()]) == 0
    assert main(args + ["--out", str(tmp_path / "demo.pt")]) == 0
    given = torch.load(tmp_path / "given.pt", weights_only=True)["images"]
    default = torch.load(tmp_path / "demo.pt", weights_only=True)["images"]
    assert given.shape == default.shape == (2, 3, *bundled.SIZE[::-1])
    # the random VAE decodes to something else than the trained demo VAE
    assert (given.float() - default.float()).abs().mean() > 10


def test_refine_training_with_made_up_coarse_images_mixes_in_fresh_pairs(tmp_path, frozen):
    from pcdms_core.train.training import RefineStage

    cached = torch.randint(0, 256, (3, 3, *bundled.SIZE[::-1]), dtype=torch.uint8)
    torch.save({"images": cached}, tmp_path / "coarse.pt")
    cfg = TrainConfig(stage="refine", out=str(tmp_path / "s3"), steps=2, batch_size=4, save_every=10,
                      coarse=str(tmp_path / "coarse.pt"), degrade=0.5, **frozen)
    model = load_checkpoint(train(cfg, progress=False), expect="refine")
    assert model.unet.config.in_channels == 8
    assert json.loads((tmp_path / "s3" / "train_config.json").read_text())["degrade"] == 0.5
    stage = RefineStage(cfg, "cpu")
    picked = [i for step in range(20) for i in stage.indices(step, 16, 0, 1)]
    fresh = [i for i in picked if i >= 3]
    assert 0.35 < len(fresh) / len(picked) < 0.65 and min(fresh) >= RefineStage.FRESH[0]
    assert len(set(fresh)) == len(fresh)
    # without --degrade: cached outputs only, the same ones as --degrade keeps where it keeps any
    plain = RefineStage(dataclasses.replace(cfg, degrade=0.0), "cpu").indices(0, 16, 0, 1)
    mixed = stage.indices(0, 16, 0, 1)
    assert max(plain) < 3 and all(j == i for i, j in zip(plain, mixed) if j < 3) and max(mixed) >= 3
    torch.save({"images": cached, "seed": 3}, tmp_path / "coarse3.pt")
    with pytest.raises(Exception, match="seed 3, but this run draws the pairs of seed 0: train with --seed 3"):
        RefineStage(dataclasses.replace(cfg, coarse=str(tmp_path / "coarse3.pt")), "cpu")
    for bad, match in ((dict(stage="inpaint", degrade=0.5), "refining only"),
                       (dict(stage="refine", degrade=1.5), "between 0 and 1"),
                       (dict(stage="refine", degrade=0.5, data="deepfashion"), "--data synthetic")):
        with pytest.raises(Exception, match=match):
            TrainConfig(out=str(tmp_path / "x"), **bad)


def test_degrade_target_makes_a_plausible_wrong_coarse_image():
    from pcdms_core.train.training import SyntheticData, degrade_target

    b = SyntheticData(5, bundled.SIZE).batch(list(range(16)))
    made = degrade_target(b.target, b.target_skeleton, b.target_mask, torch.Generator().manual_seed(1))
    again = degrade_target(b.target, b.target_skeleton, b.target_mask, torch.Generator().manual_seed(1))
    other = degrade_target(b.target, b.target_skeleton, b.target_mask, torch.Generator().manual_seed(2))
    assert made.shape == b.target.shape and made.dtype == torch.uint8
    assert torch.equal(made, again) and not torch.equal(made, other)
    err = metrics.masked_colour_error(made, b.target, b.target_mask)
    assert (err > 1).all()  # every one is changed ...
    # ... but each stays the person in the target pose: nearer its own target than the next pair's target
    assert (err < metrics.masked_colour_error(made.roll(1, 0), b.target, b.target_mask)).float().mean() > 0.9


def test_vae_decoder_only_training_keeps_the_latent_space(tmp_path, frozen):
    init = load_vae(frozen["vae"])
    cfg = TrainConfig(stage="vae", out=str(tmp_path / "v"), steps=3, batch_size=2, lr=1e-3, save_every=10,
                      init=frozen["vae"], decoder_only=True)
    tuned = load_vae(train(cfg, progress=False))
    before, after = init.state_dict(), tuned.state_dict()
    assert tuned.config.scaling_factor == init.config.scaling_factor
    for name, value in before.items():
        same = torch.equal(value, after[name])
        assert same == (not name.startswith(("decoder.", "post_quant_conv."))), name
    with pytest.raises(Exception, match="--init"):
        train(TrainConfig(stage="vae", out=str(tmp_path / "w"), steps=1, decoder_only=True), progress=False)
    with pytest.raises(Exception, match="VAE only"):
        TrainConfig(stage="prior", out=str(tmp_path / "x"), decoder_only=True)


def test_vae_training_from_a_file_and_from_a_pool(tmp_path, frozen):
    from pcdms_core.train.training import VaeStage, _data

    # a VAE given with --init comes frozen from its file: all of it trains (the decoder alone with --decoder-only)
    full = VaeStage(TrainConfig(stage="vae", out=str(tmp_path / "x"), init=frozen["vae"]), "cpu")
    assert all(p.requires_grad for p in full.model.parameters())
    cfg = TrainConfig(stage="vae", out=str(tmp_path / "x"), init=frozen["vae"], decoder_only=True)
    trained = [n for n, p in VaeStage(cfg, "cpu").model.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith(("vae.decoder.", "vae.post_quant_conv.")) for n in trained)
    # --pool: each pair's rendering is kept; a step on kept pairs is the step on them freshly rendered (same crops,
    # same posterior draws)
    cfg = TrainConfig(stage="vae", out=str(tmp_path / "x"), pool=8, size=(80, 72))
    stage, data = VaeStage(cfg, "cpu"), _data(cfg)
    indices = [5, 2, 5, 7]
    with torch.no_grad():
        fresh = [stage.loss(stage.model, data.batch(indices), torch.Generator().manual_seed(s)) for s in range(3)]
        kept = [stage.step_loss(stage.model, data, indices, torch.Generator().manual_seed(s)) for s in range(3)]
    assert sorted(stage._kept) == [2, 5, 7]
    torch.testing.assert_close(torch.stack(kept), torch.stack(fresh), rtol=1e-5, atol=1e-7)
    assert len(set(round(float(v), 7) for v in fresh)) == 3  # the seeds (crops, posterior draws) differ
    with torch.no_grad():  # kept pairs are not drawn again
        assert torch.isfinite(stage.step_loss(stage.model, NoData(), [7, 2], torch.Generator().manual_seed(0)))
    assert sorted(stage.indices(0, 4, 1, 2) + stage.indices(1, 4, 1, 2)) == [1, 1, 3, 3, 5, 5, 7, 7]
    # a run from a pool, continuing from a VAE file (its encoder changes too)
    init = load_vae(frozen["vae"])
    tuned = load_vae(train(TrainConfig(stage="vae", out=str(tmp_path / "v"), steps=2, batch_size=2, lr=1e-3, pool=3,
                                       init=frozen["vae"], save_every=10), progress=False))
    assert not torch.equal(init.encoder.conv_in.weight, tuned.encoder.conv_in.weight.float())


def test_make_coarse_with_the_prior_gives_stage_2_the_predicted_embedding(tmp_path, frozen):
    from pcdms_core import images as im
    from pcdms_core.stages.inpaint import sample_inpaint
    from pcdms_core.stages.prior import sample_prior
    from pcdms_core.train.training import SyntheticData, make_coarse

    kw = dict(count=2, steps=2, batch_size=2, progress=False, **frozen)
    with_prior = make_coarse(bundled.demo_file("inpaint"), tmp_path / "p.pt", prior=bundled.demo_file("prior"), **kw)
    saved = torch.load(with_prior, weights_only=True)
    assert saved["embedding"] == "prior"
    with_target = torch.load(make_coarse(bundled.demo_file("inpaint"), tmp_path / "t.pt", **kw), weights_only=True)
    assert with_target["embedding"] == "target"
    assert not torch.equal(saved["images"], with_target["images"])

    b = SyntheticData(0, bundled.SIZE).batch([0, 1])  # the same pairs, embedding and seeds, by hand
    clip, dino = load_image_encoder(frozen["clip"], "clip"), load_image_encoder(frozen["dino"], "dinov2")
    emb = sample_prior(load_checkpoint(bundled.demo_file("prior"), expect="prior"), clip.encode(b.source, bundled.SIZE),
                       b.source_pose, b.target_pose, generator=1)
    expected = sample_inpaint(load_checkpoint(bundled.demo_file("inpaint"), expect="inpaint"), load_vae(frozen["vae"]),
                              b.source, b.source_skeleton, b.target_skeleton, dino.encode(b.source, bundled.SIZE), emb,
                              size=bundled.SIZE, steps=2, generator=0).target
    assert torch.equal(saved["images"], im.to_uint8(expected))
    with pytest.raises(Exception, match="needs the paper inpainting model"):
        make_coarse(bundled.demo_file("inpaint_noprior"), tmp_path / "x.pt", prior=bundled.demo_file("prior"), **kw)


def test_joint_augment_changes_each_triple_the_same_way():
    from itertools import permutations

    from pcdms_core.train.training import _joint_augment

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 256, (2, 64, 3, 4, 5), dtype=torch.uint8, generator=gen)
    out_a, out_b = _joint_augment(gen, a, b)
    seen = set()
    for i in range(64):
        matches = [(flip, order) for flip in (False, True) for order in permutations(range(3))
                   if torch.equal(out_a[i], (a[i].flip(-1) if flip else a[i])[list(order)])]
        assert len(matches) == 1
        flip, order = matches[0]
        assert torch.equal(out_b[i], (b[i].flip(-1) if flip else b[i])[list(order)])  # the same change for both
        seen.add(matches[0])
    assert len(seen) >= 8  # flips and several colour orders occur
    assert sum(order == (0, 1, 2) for _, order in seen) >= 1


def test_deepfashion_folder(tmp_path):
    from PIL import Image

    from pcdms_core.train.training import DeepFashionPairs

    pairs = SyntheticPairs(seed=1)
    (tmp_path / "img").mkdir()
    (tmp_path / "pose").mkdir()
    items = []
    for i in range(2):
        p = pairs[i]
        for tag, img, pose in (("s", p.source, p.source_pose), ("t", p.target, p.target_pose)):
            Image.fromarray(img.permute(1, 2, 0).numpy()).resize((176, 256)).save(tmp_path / "img" / f"{tag}{i}.png")
            rows = [f"{x:.6f} {y:.6f}" if v else "-1 -1" for (x, y), v in zip(pose.xy, pose.visible)]
            (tmp_path / "pose" / f"{tag}{i}.txt").write_text("\n".join(rows))
        items.append({"source_image": f"s{i}.jpg", "target_image": f"t{i}.jpg"})
    (tmp_path / "train_data.json").write_text(json.dumps(items))
    data = DeepFashionPairs(tmp_path / "train_data.json", tmp_path / "img", tmp_path / "pose", (64, 64))
    b = data.batch([0, 1, 2])
    assert b.source.shape == (3, 3, 64, 64) and b.target_skeleton.shape == (3, 3, 64, 64)
    assert torch.equal(b.source[0], b.source[2])  # indices wrap around the list
    torch.testing.assert_close(b.source_pose[0], torch.tensor(np.where(pairs[0].source_pose.visible[:, None],
                               pairs[0].source_pose.xy, -1).reshape(-1), dtype=torch.float32), atol=1e-6, rtol=0)


# --- metrics -------------------------------------------------------------------------------------------------------

def test_ssim_matches_scikit_image_with_the_official_arguments():
    """Reference values from skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.2,
    use_sample_covariance=False, channel_axis=2, data_range=max-min of the generated image) on these arrays."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 3, 40, 56)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    ours = metrics.ssim(torch.from_numpy(b), torch.from_numpy(a))
    expected = torch.tensor([0.9529043530017969, 0.9526744378590565, 0.9526641806398995], dtype=torch.float64)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    assert metrics.ssim(torch.from_numpy(a), torch.from_numpy(a)).tolist() == pytest.approx([1.0] * 3)


def test_masked_colour_error_and_frechet_distance():
    pred = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    target = torch.full((1, 3, 4, 4), 10, dtype=torch.uint8)
    target[..., :2, :] = 0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, 2:, :] = True
    assert metrics.masked_colour_error(pred, target, mask).tolist() == [10.0]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 4, generator=gen)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # two Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) = 4 (means 2 apart in one dim), S equal
    b = a.clone()
    b[:, 0] += 2
    assert metrics.frechet_distance(a, b) == pytest.approx(4.0, rel=1e-6)
