"""Unusual but usable inputs give correct results, with the conversions written in the library's docstrings."""

import contextlib
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from pcdms_core import as_uint8_batch


def _reopened(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf)


def test_a_16_bit_grayscale_png_is_scaled_not_clipped_to_white():
    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)  # 0 .. 65520
    png = _reopened(Image.fromarray(ramp))
    assert png.mode.startswith("I")  # how PIL opens a 16-bit PNG
    got = as_uint8_batch(png)
    assert got.shape == (1, 3, 8, 8)
    want = torch.from_numpy(np.rint(ramp / 257.0).astype(np.uint8))
    assert torch.equal(got[0, 0], want) and torch.equal(got[0, 1], want) and torch.equal(got[0, 2], want)
    assert got.min() == 0 and got.max() == 255  # the whole range, not all white


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA", "RGBA", "1"])
def test_palette_cmyk_alpha_and_bilevel_images_convert_to_rgb(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    img = rgb.convert(mode)
    got = as_uint8_batch(img)
    assert got.shape == (1, 3, 6, 5) and got.dtype == torch.uint8
    assert torch.equal(got[0], torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1))


def test_float_grayscale_in_0_1_is_scaled():
    img = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F")
    assert int(as_uint8_batch(img)[0, 0, 0, 0]) == 128


# --- files that are not checkpoints -------------------------------------------------------------------------------

@pytest.mark.parametrize("content, what", [
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "a PNG image"),
    (b"\n  <!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>", "a web page"),
    (b"\xff\xd8\xff\xe0" + bytes(100), "a JPEG image"),
    (b'{"error": "quota exceeded"}', "a JSON file"),
    (b"hello, this is text" * 10, "not a PyTorch checkpoint"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_and_never_called_a_code_pickle(tmp_path, content, what):
    from pcdms_core import CheckpointError, load_checkpoint

    path = tmp_path / "s2_512.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert what in msg and "Download the checkpoint again" in msg
    assert "weights_only" not in msg and "pickle" not in msg  # never advice to switch the safety off


def test_a_damaged_pickle_is_called_damaged_not_unsafe(tmp_path):
    from pcdms_core import CheckpointError, load_checkpoint

    path = tmp_path / "cut.pt"
    path.write_bytes(b"\x80\x02}q\x00(X\x06\x00\x00\x00moduleq\x01\xff\xfe garbage")
    with pytest.raises(CheckpointError, match="damaged") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value)


def test_a_safetensors_file_under_a_pt_name_loads_as_what_it_is(tmp_path):
    from pcdms_core import inspect_checkpoint, load_checkpoint, save_checkpoint

    from helpers import CONFIGS, PARITY

    model = load_checkpoint(PARITY / "checkpoints" / "s3.pt", config=CONFIGS["s3"])
    path = save_checkpoint(model, tmp_path / "s3.safetensors")
    renamed = path.rename(tmp_path / "s3_renamed.pt")
    assert inspect_checkpoint(renamed).variant == "refine"


# --- model files and configs that cannot make a working model: one CheckpointError at load time ----------------

def _official_sd(name: str) -> dict:
    obj = torch.load(PARITY_CKPT / f"{name}.pt", map_location="cpu", weights_only=True)
    return dict(obj["module"])


def _load_changed(tmp_path, name: str, change=None, config_changes=None, **kw):
    """Load the parity file ``name`` after ``change(state_dict)`` and with ``config_changes`` in its config."""
    import json

    from pcdms_core import load_checkpoint

    from helpers import CONFIGS, save_deepspeed

    sd = _official_sd(name)
    if change is not None:
        change(sd)
    path = save_deepspeed(tmp_path / f"{name}_changed.pt", sd)
    config = dict(json.loads(CONFIGS[name].read_text()), **(config_changes or {}))
    return load_checkpoint(path, config=config, **kw)


from helpers import PARITY as _PARITY  # noqa: E402

PARITY_CKPT = _PARITY / "checkpoints"


@pytest.mark.parametrize("name, channels, want, fits", [
    ("s2_paper", 4, "takes 9 (4 noisy latents + 1 mask + 4 masked-image latents)", "a plain text-to-image UNet"),
    ("s2_demo", 8, "takes 9", "a stage-3 (refining) UNet"),
    ("s3", 9, "takes 8 (4 noisy latents + 4 coarse-image latents)", "a stage-2 (inpainting) UNet"),
])
def test_a_unet_with_the_wrong_input_channels_for_its_stage_is_refused(tmp_path, name, channels, want, fits):
    from pcdms_core import CheckpointError

    def change(sd):
        w = sd["unet.conv_in.weight"]
        sd["unet.conv_in.weight"] = torch.zeros(w.shape[0], channels, *w.shape[2:])

    with pytest.raises(CheckpointError) as err:
        _load_changed(tmp_path, name, change)
    msg = str(err.value)
    assert f"takes {channels} input channels" in msg and want in msg and fits in msg and "unet.conv_in.weight" in msg


@pytest.mark.parametrize("name, key", [
    ("s2_paper", "unet.conv_out.weight"),
    ("s2_paper", "image_proj_model_p.net.4.weight"),
    ("s2_demo", "pose_proj.conv_out.weight"),
    ("s2_demo", "pose_proj.blocks.1.weight"),
    ("s3", "unet.conv_out.weight"),
])
def test_a_missing_tensor_that_a_size_is_read_from_is_named(tmp_path, name, key):
    from pcdms_core import CheckpointError

    with pytest.raises(CheckpointError) as err:
        _load_changed(tmp_path, name, lambda sd: sd.pop(key))
    assert repr(key) in str(err.value) and "incomplete" in str(err.value)


def test_a_tensor_of_the_wrong_rank_is_named(tmp_path):
    from pcdms_core import CheckpointError

    def change(sd):
        sd["unet.conv_in.weight"] = sd["unet.conv_in.weight"].flatten()

    with pytest.raises(CheckpointError, match=r"'unet.conv_in.weight' has shape \[\d+\] \(1 dimensions\)"):
        _load_changed(tmp_path, "s3", change)


@pytest.mark.parametrize("changes, named", [
    ({"norm_num_groups": 3}, "norm_num_groups 3 does not divide the channel widths [8, 16]"),
    ({"attention_head_dim": [3, 3]}, "attention_head_dim 3 does not divide the width 8 of level 0"),
    ({"num_attention_heads": 5}, "num_attention_heads 5 does not divide the width 8"),
    ({"block_out_channels": ["8", 16]}, "block_out_channels must hold whole numbers"),
    ({"block_out_channels": 8}, "block_out_channels must be a list"),
    ({"block_out_channels": [8, -16]}, "block_out_channels must hold numbers of at least 1"),
    ({"layers_per_block": -1}, "layers_per_block must hold numbers of at least 1"),
    ({"layers_per_block": [1, 1, 1]}, "layers_per_block lists 3 values but there are 2 blocks"),
    ({"cross_attention_dim": "1024"}, "cross_attention_dim must hold whole numbers"),
    ({"down_block_types": ["CrossAttnDownBlock2D"]}, "must have the same length"),
    ({"norm_eps": -1}, "norm_eps must be a number more than 0"),
    ({"down_block_types": ["FancyDownBlock2D", "DownBlock2D"]}, "cannot build the network: ValueError"),
])
def test_a_unet_config_with_impossible_values_is_refused_naming_the_setting(tmp_path, changes, named):
    from pcdms_core import CheckpointError

    with pytest.raises(CheckpointError) as err:
        _load_changed(tmp_path, "s3", config_changes=changes)
    msg = str(err.value)
    assert named in msg and "config from argument" in msg and "Correct or remove that config" in msg
    assert "Traceback" not in msg


@pytest.mark.parametrize("changes, named", [
    ({"num_layers": "two"}, "num_layers must be a whole number, got 'two'"),
    ({"num_attention_heads": 0}, "num_attention_heads must be at least 1"),
    ({"embed_std": 0}, "embed_std must be a number more than 0"),
    ({"dropout": 2}, "dropout must be a number at least 0.0 and at most 1.0"),
])
def test_a_prior_config_with_impossible_values_is_refused(tmp_path, changes, named):
    from pcdms_core import CheckpointError

    with pytest.raises(CheckpointError, match=re.escape(named)):
        _load_changed(tmp_path, "s1", config_changes=changes)


def test_weights_of_another_model_size_name_each_kind_of_difference(tmp_path):
    """The general check: every tensor against the model the config builds; a few named, and the counts."""
    from pcdms_core import CheckpointError

    with pytest.raises(CheckpointError) as err:
        _load_changed(tmp_path, "s2_paper", config_changes={"block_out_channels": [16, 32], "layers_per_block": 2})
    msg = str(err.value)
    assert re.search(r"\d+ tensors missing from the file, e.g. unet\.\S+, unet\.\S+, unet\.\S+", msg)
    shapes = re.search(r"(\d+) tensors with other shapes, e.g. (.*)", msg)
    assert shapes and int(shapes.group(1)) > 3 and shapes.group(2).count(" vs model ") == 3
    assert "the config from argument does not describe this checkpoint" in msg


def test_a_file_that_mixes_two_models_is_refused(tmp_path):
    from pcdms_core import CheckpointError

    def change(sd):  # a pose encoder whose output does not fit the UNet's first level
        w = sd["pose_proj.conv_out.weight"]
        sd["pose_proj.conv_out.weight"] = torch.zeros(w.shape[0] * 2, *w.shape[1:])
        sd["pose_proj.conv_out.bias"] = torch.zeros(w.shape[0] * 2)

    with pytest.raises(CheckpointError, match="mixes parts of two models: its pose encoder"):
        _load_changed(tmp_path, "s2_demo", change)


@pytest.mark.parametrize("value, what", [(float("nan"), "1 NaN, 0 infinite"), (float("inf"), "0 NaN, 1 infinite")])
def test_a_file_with_non_finite_weights_is_refused_at_load(tmp_path, value, what):
    from pcdms_core import CheckpointError

    def change(sd):
        sd["unet.conv_in.weight"] = sd["unet.conv_in.weight"].clone()
        sd["unet.conv_in.weight"].view(-1)[3] = value

    with pytest.raises(CheckpointError) as err:
        _load_changed(tmp_path, "s3", change)
    msg = str(err.value)
    assert "NaN or infinite weights in 1 tensors" in msg and f"unet.conv_in.weight ({what}" in msg
    assert "Download it again" in msg


def test_values_that_overflow_fp16_when_cast_are_refused_with_the_dtype_to_use(tmp_path):
    from pcdms_core import CheckpointError

    def change(sd):
        sd["unet.conv_in.bias"] = sd["unet.conv_in.bias"].float().clone()
        sd["unet.conv_in.bias"][0] = 1e6

    with pytest.raises(CheckpointError, match="too large for float16.*load it in bf16 or fp32"):
        _load_changed(tmp_path, "s3", change, dtype=torch.float16)
    assert _load_changed(tmp_path, "s3", change, dtype=torch.bfloat16) is not None  # bf16 holds 1e6


def test_the_process_still_loads_after_failed_loads(tmp_path):
    from pcdms_core import CheckpointError

    with pytest.raises(CheckpointError):
        _load_changed(tmp_path, "s3", config_changes={"norm_num_groups": 3})
    with pytest.raises(CheckpointError):
        _load_changed(tmp_path, "s3", lambda sd: sd.pop("unet.conv_out.weight"))
    model = _load_changed(tmp_path, "s3")
    assert model.variant == "refine" and all(p.device.type == "cpu" for p in model.parameters())
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # empty_weights was undone


def test_an_encoder_file_missing_a_tensor_its_size_is_read_from_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    from pcdms_core import CheckpointError, load_image_encoder

    sd = load_file(str(_PARITY / "dinov2" / "model.safetensors"))
    sd.pop("embeddings.position_embeddings")
    save_file(sd, str(tmp_path / "dino.safetensors"))
    with pytest.raises(CheckpointError, match="'embeddings.position_embeddings'.*incomplete"):
        load_image_encoder(tmp_path / "dino.safetensors", "dinov2")


def test_a_vae_config_that_cannot_build_is_one_error(tmp_path):
    import json
    import shutil

    from pcdms_core import CheckpointError, load_vae

    shutil.copy(_PARITY / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae.safetensors")
    cfg = json.loads((_PARITY / "vae" / "config.json").read_text())
    cfg["down_block_types"] = ["NoSuchBlock"] * len(cfg["down_block_types"])
    (tmp_path / "vae.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="the VAE config from vae.json cannot build the network"):
        load_vae(tmp_path / "vae.safetensors")


# --- NaN / inf made while sampling: one NumericalError naming the stage, never passed on ------------------------

@contextlib.contextmanager
def _makes(module, value=float("nan")):
    """``module``'s forward output multiplied by ``value`` (what an fp16 overflow or a broken model gives)."""
    handle = module.register_forward_hook(lambda m, a, out: out * value)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def stage_inputs(models, inputs, refs):
    src = inputs("src_a.png")
    return dict(src=src, tokens=models("dinov2").encode(src, (64, 64)), pose=inputs("pose_a.png"),
                target=inputs("pose_t1.png"), emb=refs("stage2_paper")["run.inputs.pred_t_img_embed"])


def test_a_prior_that_makes_nan_is_named(models):
    from pcdms_core import sample_prior
    from pcdms_core.errors import NumericalError

    prior = models("s1")
    with _makes(prior), pytest.raises(NumericalError) as err:
        sample_prior(prior, torch.zeros(1, 1024), torch.zeros(1, 36), torch.zeros(1, 36), steps=2, generator=0)
    msg = str(err.value)
    assert "stage 1 (the prior) produced NaN or infinite values in the target embedding" in msg
    assert "bf16 or fp32" in msg and "float32" in msg


def test_an_inpainting_unet_that_overflows_is_named(models, stage_inputs):
    from pcdms_core import sample_inpaint
    from pcdms_core.errors import NumericalError

    p, model = stage_inputs, models("s2_paper")
    with _makes(model, float("inf")), pytest.raises(NumericalError, match=r"stage 2 \(inpainting\) produced NaN or infinite values in its latents"):
        sample_inpaint(model, models("vae"), p["src"], p["pose"], p["target"], p["tokens"], p["emb"], size=(64, 64),
                       steps=2, generator=0)


def test_a_vae_that_overflows_in_stage_3_is_named_with_the_vae_fix(models, stage_inputs):
    from pcdms_core import sample_refine
    from pcdms_core.errors import NumericalError

    vae = models("vae")
    with _makes(vae.decoder), pytest.raises(NumericalError) as err:
        sample_refine(models("s3"), vae, stage_inputs["src"], stage_inputs["tokens"], size=(64, 64), steps=1, generator=0)
    msg = str(err.value)
    assert "stage 3 (refining) produced NaN or infinite values in the decoded image" in msg
    assert "load the VAE in fp32 or bf16" in msg and "another VAE" in msg


def test_the_pipeline_stops_at_the_stage_that_made_nan(models, stage_inputs):
    from pcdms_core import PCDMsPipeline, StageSettings, load_pose
    from pcdms_core.errors import NumericalError

    pipe = PCDMsPipeline(inpaint=models("s2_paper"), vae=models("vae"), dino=models("dinov2"), prior=models("s1"),
                         clip=models("clip_vision"), refine=models("s3"))
    pose = load_pose(_PARITY / "inputs" / "pose_a.json")
    quick = StageSettings(steps=1)
    with _makes(models("s3")), pytest.raises(NumericalError, match=r"stage 3 \(refining\).*its latents"):
        pipe(stage_inputs["src"], pose, pose, size=(64, 64), prior_settings=StageSettings(steps=2),
             inpaint_settings=quick, refine_settings=quick)


def test_non_finite_features_given_to_a_stage_are_refused(models, stage_inputs):
    from pcdms_core import InputError, sample_refine

    tokens = stage_inputs["tokens"].clone()
    tokens[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"source features \(DINOv2 tokens\) hold NaN or infinite values"):
        sample_refine(models("s3"), models("vae"), stage_inputs["src"], tokens, size=(64, 64), steps=1)


# --- images: refused when they cannot work, warned about when the official stretch distorts them ---------------

@pytest.mark.parametrize("size, working, said", [
    ((1000, 50), (512, 512), ["changes its proportions 20.0 times", "squeezed", "Crop it nearer to 512:512"]),
    ((50, 1000), (512, 512), ["changes its proportions 20.0 times", "widened"]),
    ((8, 8), (512, 512), ["enlarged 64 times", "at least 128x128 pixels"]),
    ((176, 256), (512, 512), []),  # the official DeepFashion stretch (1.45 times) is not worth a word
    ((128, 128), (512, 512), []),  # enlarged exactly 4 times: at the limit
    ((300, 100), (512, 256), []),  # 3:1 into 2:1 is 1.5 times
])
def test_size_warnings_follow_the_documented_limits(size, working, said):
    from pcdms_core.images import size_warnings

    got = " | ".join(size_warnings(size, working, "source image"))
    for text in said:
        assert text in got
    if not said:
        assert got == ""


@pytest.mark.parametrize("image, message", [
    (torch.zeros(0, 3, 8, 8), "the image batch is empty"),
    (torch.zeros(1, 3, 0, 8), "the image has no pixels (8x0)"),
    (np.zeros((0, 0, 3), dtype=np.uint8), "the image has no pixels"),
    (torch.full((1, 3, 4, 4), float("nan")), "holds NaN or infinite values"),
])
def test_images_that_cannot_work_are_refused(image, message):
    from pcdms_core import InputError

    with pytest.raises(InputError, match=re.escape(message)):
        as_uint8_batch(image)


def test_a_one_pixel_wide_source_still_works_with_a_warning(models):
    from pcdms_core import encode_source
    from pcdms_core.errors import PCDMsWarning

    with pytest.warns(PCDMsWarning, match="stretched to the working size 64x64, which changes its proportions 50.0"):
        features = encode_source(torch.rand(1, 3, 50, 1), models("dinov2"), size=(64, 64))
    assert torch.isfinite(features.tokens).all()


def test_refine_says_when_it_resizes_an_image_of_another_size(models, stage_inputs):
    from pcdms_core import sample_refine
    from pcdms_core.errors import PCDMsWarning

    bigger = torch.rand(1, 3, 128, 128)
    with pytest.warns(PCDMsWarning, match=r"the image to refine \(128x128\) is resized to the working size 64x64.*"
                                          "upscale after refining"):
        sample_refine(models("s3"), models("vae"), bigger, stage_inputs["tokens"], size=(64, 64), steps=1, generator=0)


def test_stage_2_says_when_a_skeleton_image_is_stretched(models, stage_inputs):
    from pcdms_core import sample_inpaint
    from pcdms_core.errors import PCDMsWarning

    p = stage_inputs
    with pytest.warns(PCDMsWarning, match=r"the target pose image \(256x32\) is stretched"):
        sample_inpaint(models("s2_demo"), models("vae"), p["src"], p["pose"], torch.rand(1, 3, 32, 256), p["tokens"],
                       size=(64, 64), steps=1, generator=0)


# --- the no-prior stage 2 given a prior and CLIP: said once, not loaded -------------------------------------------

def test_the_pipeline_warns_once_and_does_not_load_an_unused_prior(tmp_path, monkeypatch):
    from pcdms_core import PCDMsPipeline, convert_checkpoint
    from pcdms_core.errors import PCDMsWarning
    from pcdms_core import pipeline as pipeline_module

    from helpers import CONFIGS

    demo = convert_checkpoint(PARITY_CKPT / "s2_demo.pt", tmp_path / "noprior.safetensors", config=CONFIGS["s2_demo"])
    loaded = []
    real = pipeline_module.load_checkpoint
    monkeypatch.setattr(pipeline_module, "load_checkpoint", lambda p, **kw: loaded.append(kw["expect"]) or real(p, **kw))
    with pytest.warns(PCDMsWarning) as said:
        pipe = PCDMsPipeline.from_files(inpaint=demo, vae=_PARITY / "vae", dino=_PARITY / "dinov2",
                                        prior=PARITY_CKPT / "s1.pt", clip=_PARITY / "clip_vision")
    assert len(said) == 1 and "noprior.safetensors is the no-prior stage-2 checkpoint" in str(said[0].message)
    assert pipe.prior is None and pipe.clip is None and loaded == ["inpaint"]


def test_a_pipeline_built_with_an_unused_prior_says_so_when_run(models, stage_inputs):
    from pcdms_core import PCDMsPipeline, StageSettings, load_pose
    from pcdms_core.errors import PCDMsWarning

    pipe = PCDMsPipeline(inpaint=models("s2_demo"), vae=models("vae"), dino=models("dinov2"), prior=models("s1"),
                         clip=models("clip_vision"))
    pose = load_pose(_PARITY / "inputs" / "pose_a.json")
    with pytest.warns(PCDMsWarning, match="does not use the stage-1 prior or CLIP"):
        pipe(stage_inputs["src"], pose, pose, size=(64, 64), inpaint_settings=StageSettings(steps=1))


# --- the command line: every setting checked before any model loads; each warning once on stderr ---------------

@pytest.fixture(scope="module")
def cli_models(tmp_path_factory):
    from pcdms_core import convert_checkpoint

    from helpers import CONFIGS

    out = tmp_path_factory.mktemp("cli_models")
    return {name: convert_checkpoint(PARITY_CKPT / f"{name}.pt", out / f"{name}.safetensors", config=CONFIGS[name])
            for name in CONFIGS}


def _cli(capsys, *argv):
    from pcdms_core.cli import main

    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.err


@pytest.mark.parametrize("extra, message", [
    (["--inpaint-guidance", "nan"], "guidance scale must be a finite number"),
    (["--refine-steps", "0"], "steps must be a positive integer"),
    (["--num-images", "0"], "number of images per source must be a whole number from 1"),
    (["--refine-strength", "1.5"], "strength must be a number in (0, 1]"),
    (["--prior-steps", "1"], "UnCLIP scheduler needs at least 2 steps"),
    (["--seed", "-3"], "seed must be a whole number from 0"),
    (["--size", "60"], "--size 60x60 is not usable"),
    (["--prior", None], "paper stage-2 checkpoint, which needs the stage-1 prior and CLIP"),
])
def test_cli_settings_are_checked_before_any_model_loads(tmp_path, capsys, monkeypatch, cli_models, extra, message):
    from pcdms_core import pipeline

    monkeypatch.setattr(pipeline.PCDMsPipeline, "from_files", classmethod(lambda *a, **k: pytest.fail("loaded")))
    files = {"--prior": cli_models["s1"], "--inpaint": cli_models["s2_paper"], "--refine": cli_models["s3"],
             "--clip": _PARITY / "clip_vision", "--dino": _PARITY / "dinov2", "--vae": _PARITY / "vae"}
    if extra[1:] == [None]:
        files.pop(extra[0])
        extra = []
    inputs = _PARITY / "inputs"
    rc, err = _cli(capsys, "generate", "--source", inputs / "src_a.png", "--source-pose", inputs / "pose_a.json",
                   "--target-pose", inputs / "pose_t1.json", *[a for kv in files.items() for a in kv], "--size", "64",
                   *extra, "--out", tmp_path / "x.png")
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_cli_no_prior_with_a_prior_and_a_distorted_source_warns_once_each(tmp_path, capsys, cli_models):
    from PIL import Image

    wide = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 400, 3), dtype=np.uint8)).save(wide)
    inputs = _PARITY / "inputs"
    rc, err = _cli(capsys, "generate", "--source", wide, "--source-pose", inputs / "pose_a.json",
                   "--target-pose", inputs / "pose_t2.png",  # a skeleton image: fine without the prior
                   "--inpaint", cli_models["s2_demo"], "--prior", cli_models["s1"], "--clip", _PARITY / "clip_vision",
                   "--dino", _PARITY / "dinov2", "--vae", _PARITY / "vae", "--size", "64", "--inpaint-steps", "1",
                   "--quiet", "--out", tmp_path / "x.png")
    assert rc == 0, err
    lines = err.strip().splitlines()
    assert sum("does not use the stage-1 prior or CLIP" in ln for ln in lines) == 1
    assert sum("source image (400x20) is stretched" in ln for ln in lines) == 1
    assert all(ln.startswith("warning: ") for ln in lines) and len(lines) == 2
    assert (tmp_path / "x.png").exists()


# --- the nodes (ComfyUI stood in): checks before any loading, warnings in the log and on the node ---------------

from test_nodes import _image, _load, env, run  # noqa: E402,F401  (the stood-in ComfyUI and its tiny models)


def _node(env, node_id, **inputs):
    return env.nodes[node_id].execute(**inputs)


def _pose(env, name="pose_a.json"):
    return run(env, "PCDMsLoadPose", pose_file=name, person=-1, canvas_width=0, canvas_height=0)[0]


def test_node_settings_and_inputs_are_checked_before_any_model_moves(env):
    PCDMsError = env.pack.pcdms_core.errors.PCDMsError
    m = _load(env)
    source = run(env, "PCDMsEncodeSource", image=_image("src_a.png"), dino=m.dino, clip=m.clip, width=64, height=64)[0]
    pose = _pose(env)
    inpaint = dict(model=m.inpaint, vae=m.vae, source=source, source_pose=pose, target_pose=pose, seed=0, steps=2,
                   cfg=2.0, scheduler="auto", batch_size=1, embedding=torch.zeros(1, 1024))
    refine = dict(model=m.refine, vae=m.vae, source=source, image=_image("src_a.png"), seed=0, steps=2, cfg=1.0,
                  cfg_rescale=-1.0, scheduler="unipc", strength=1.0)
    prior = dict(model=m.prior, source=source, source_pose=pose, target_pose=pose, seed=0, steps=2, cfg=1.0,
                 scheduler="unclip")
    cases = [
        ("PCDMsInpaint", dict(inpaint, cfg=float("nan")), "guidance scale must be a finite number"),
        ("PCDMsInpaint", dict(inpaint, batch_size=0), "number of images per source"),
        ("PCDMsInpaint", dict(inpaint, seed=-1), "seed must be a whole number"),
        ("PCDMsInpaint", dict(inpaint, scheduler="karras"), "unknown scheduler 'karras'"),
        ("PCDMsInpaint", dict(inpaint, target_pose=[{"people": [], "canvas_width": 8, "canvas_height": 8}]), "nobody"),
        ("PCDMsRefine", dict(refine, strength=0.0), "strength must be a number in (0, 1]"),
        ("PCDMsRefine", dict(refine, cfg_rescale=float("inf")), "guidance rescale must be a finite number"),
        ("PCDMsRefine", dict(refine, image=torch.zeros(0, 64, 64, 3)), "the image batch is empty"),
        ("PCDMsPrior", dict(prior, steps=1), "UnCLIP scheduler needs at least 2 steps"),
        ("PCDMsEncodeSource", dict(image=_image("src_a.png"), dino=m.dino, clip=None, width=0, height=64),
         "is not usable"),
        ("PCDMsEncodeSource", dict(image=torch.full((1, 8, 8, 3), float("nan")), dino=m.dino, clip=None, width=64,
                                   height=64), "holds NaN"),
        ("PCDMsAllStages", dict(inpaint_model=m.inpaint, vae=m.vae, dino=m.dino, image=_image("src_a.png"),
                                source_pose=pose, target_pose=pose, seed=0, width=64, height=64, inpaint_steps=2,
                                batch_size=1), "needs the prior's embedding: connect a stage-1 checkpoint"),
        ("PCDMsAllStages", dict(inpaint_model=m.demo, vae=m.vae, dino=m.dino, image=_image("src_a.png"),
                                source_pose=pose, target_pose=pose, seed=0, width=64, height=64, inpaint_steps=0,
                                batch_size=1), "steps must be a positive integer"),
    ]
    for node_id, inputs, message in cases:
        before = len(env.mm.load_calls)
        with pytest.raises(PCDMsError, match=re.escape(message)):
            _node(env, node_id, **inputs)
        assert len(env.mm.load_calls) == before, f"{node_id} loaded a model before refusing: {message}"


def test_inpaint_names_the_no_prior_file_and_the_fix_when_an_embedding_is_connected(env):
    PCDMsError = env.pack.pcdms_core.errors.PCDMsError
    m = _load(env)
    source = run(env, "PCDMsEncodeSource", image=_image("src_b.png"), dino=m.dino, clip=None, width=64, height=64)[0]
    pose = _pose(env)
    with pytest.raises(PCDMsError) as err:
        _node(env, "PCDMsInpaint", model=m.demo, vae=m.vae, source=source, embedding=torch.zeros(1, 1024),
              source_pose=pose, target_pose=pose, seed=0, steps=1, cfg=2.0, scheduler="auto", batch_size=1)
    msg = str(err.value)
    assert "PCDMs_ckpt.safetensors is the no-prior stage-2 checkpoint" in msg
    assert "disconnect the embedding input" in msg and "s2_512.pt" in msg


def test_nodes_show_and_log_what_they_distort(env, caplog):
    m = _load(env)
    wide = torch.rand(1, 20, 400, 3)
    with caplog.at_level("WARNING"):
        out = _node(env, "PCDMsEncodeSource", image=wide, dino=m.dino, clip=None, width=64, height=64)
    assert out.ui and any("source image (400x20) is stretched" in t for t in out.ui["text"])
    assert any("PCDMs Encode Source: the source image (400x20)" in r.getMessage() for r in caplog.records)
    source = out.result[0]
    plain = _node(env, "PCDMsEncodeSource", image=_image("src_b.png"), dino=m.dino, clip=None, width=64, height=64)
    assert plain.ui is None  # nothing to say: no text on the node

    refined = _node(env, "PCDMsRefine", model=m.refine, vae=m.vae, source=source, image=torch.rand(1, 128, 128, 3),
                    seed=0, steps=1, cfg=1.0, cfg_rescale=-1.0, scheduler="unipc", strength=1.0)
    assert any("image to refine (128x128) is resized to the working size 64x64" in t for t in refined.ui["text"])
    assert refined.result[0].shape == (1, 64, 64, 3)

    pose = _pose(env)
    final = _node(env, "PCDMsAllStages", inpaint_model=m.demo, vae=m.vae, dino=m.dino, image=_image("src_b.png"),
                  source_pose=pose, target_pose=pose, prior_model=m.prior, clip=m.clip, seed=0, width=64, height=64,
                  inpaint_steps=1, batch_size=1)
    assert [t for t in final.ui["text"] if "does not use the stage-1 prior or CLIP" in t]
    loaded = {p.model.inner.__class__.__name__ for call in env.mm.load_calls for p in call}
    assert "PriorTransformer" not in loaded  # the unused prior was never brought to the device


# --- pose files and POSE_KEYPOINT values: one PoseError naming the file, frame, person, field and the fix ---------
# (the rules: docs/poses.md; through the library, the command line's --source-pose and PCDMs Load Pose)

import json as _json  # noqa: E402
import warnings as _warnings  # noqa: E402

_POSE_A = _json.loads((_PARITY / "inputs" / "pose_a.json").read_text())
_KPS_A = _POSE_A[0]["people"][0]["pose_keypoints_2d"]


def _frame(**changes):
    return dict(_json.loads(_json.dumps(_POSE_A[0])), **changes)


def _with_kps(kps, **person):
    return _frame(people=[dict(person, pose_keypoints_2d=kps)])


def _set(i, value):
    kps = list(_KPS_A)
    kps[i] = value
    return _with_kps(kps)


_BAD_POSES = [  # (value, words the message must hold: where, what, the fix)
    (_with_kps(["12"] * 54), ["person 0, pose_keypoints_2d[0] (keypoint 0's x)", "the text '12' is not a number",
                              "without quotes"]),
    (_with_kps({"x": 1}), ["person 0, pose_keypoints_2d is an object", "a flat list x0, y0, c0"]),
    (_frame(people="x"), ["'people' is the text 'x', not a list of people", '{"people": [{"pose_keypoints_2d"']),
    (_frame(people={"pose_keypoints_2d": _KPS_A}), ["'people' is an object", 'put the object in a list']),
    (_frame(people=[3]), ["person 0 is 3, not a person", '{"pose_keypoints_2d": [x0, y0, c0, ...]}']),
    (_frame(people=[{"keypoints": _KPS_A}]), ["person 0 has no 'pose_keypoints_2d' (its keys: keypoints)"]),
    (_frame(canvas_width="a"), ["canvas_width is the text 'a'", "a whole number from 1 to 16384"]),
    (_frame(canvas_width=0), ["canvas_width is 0", "width in pixels of the image the pose was detected on"]),
    (_frame(canvas_height=-256), ["canvas_height is -256", "a whole number from 1 to 16384"]),
    (_frame(canvas_width=176.5), ["canvas_width is 176.5", "whole number"]),
    (_frame(canvas_width=10**9), ["canvas_width is 1000000000", "from 1 to 16384"]),
    (_frame(canvas_width=True), ["canvas_width is true (a true/false value)"]),
    ({k: v for k, v in _POSE_A[0].items() if k != "canvas_height"},
     ["has canvas_width but no canvas_height", "give both"]),
    (_set(4, True), ["pose_keypoints_2d[4] (keypoint 1's y): true (a true/false value) is not a number"]),
    (_set(5, [1, 2]), ["pose_keypoints_2d[5] (keypoint 1's confidence): a list of 2 is not a number"]),
    (_set(0, float("inf")), ["pose_keypoints_2d[0] (keypoint 0's x): inf is infinite or too large"]),
    (_set(0, 10**400), ["a number of 401 digits is infinite or too large", "mark the joint missing"]),
    (_set(0, 1e9), ["the nose is at (1e+09, 40.96), more than 100 times the canvas size (176 x 256)",
                    "the coordinates or the canvas size"]),
    (_with_kps(_KPS_A[:-1]), ["pose_keypoints_2d holds 53 numbers, not a multiple of 3", "x0, y0, c0"]),
    (_with_kps([v for i, v in enumerate(_KPS_A) if i % 3 != 2]),
     ["pose_keypoints_2d holds 12 keypoints; expected 18", "look like x, y pairs for 18 joints",
      "add a confidence after each pair"]),
    (_with_kps([[_KPS_A[i], _KPS_A[i + 1]] for i in range(0, 54, 3)]), ["pose_keypoints_2d[0] holds 2 values, not 3"]),
    (_with_kps([[[1, 2, 3]]] * 18), ["pose_keypoints_2d[0] holds 1 values, not 3"]),
    (_with_kps(_KPS_A, hand_left_keypoints_2d="none"), ["person 0, hand_left_keypoints_2d is the text 'none'"]),
    (_frame(people=None), ["'people' is null", '{"people": [']),
    ({"canvas_width": 8, "canvas_height": 8}, ["there is no 'people' list (its keys: canvas_width, canvas_height)"]),
    ([], ["the pose holds no frames"]),
    ([[_POSE_A[0]]], ["frame 0 is a list of 1, not a frame", "give one list of frames"]),
    ([_POSE_A[0], "x"], ["frame 1 is the text 'x', not a frame"]),
    (None, ["no pose given"]),
    (7, ["a pose is a file path or a POSE_KEYPOINT value", "got 7"]),
]


@pytest.mark.parametrize("value, words", _BAD_POSES)
def test_a_bad_pose_value_is_one_pose_error_naming_where_and_the_fix(value, words):
    from pcdms_core import PoseError, load_pose, poses_from_keypoints

    for read in (load_pose, poses_from_keypoints):  # a node's POSE_KEYPOINT input goes through the second
        if read is poses_from_keypoints and not isinstance(value, (list, dict)):
            continue
        with _warnings.catch_warnings():
            _warnings.simplefilter("error")  # no divide-by-zero or other warning on the way
            with pytest.raises(PoseError) as err:
                read(value)
        assert type(err.value) is PoseError
        for word in words:
            assert word in str(err.value), f"{read.__name__}: {err.value}"


_BAD_FILES = [  # (name, bytes, words)
    ("skeleton.json", b"\x89PNG\r\n\x1a\n" + bytes(64), ["skeleton.json is a PNG image, not keypoints", ".json as DWPose"]),
    ("skeleton.txt", b"\xff\xd8\xff\xe0" + bytes(64), ["skeleton.txt is a JPEG image, not keypoints"]),
    ("blob.json", bytes(range(256)), ["blob.json is a binary file, not a keypoint file", "UTF-8"]),
    ("empty.json", b"", ["empty.json is empty"]),
    ("blank.txt", b"  \n\n", ["blank.txt is empty"]),
    ("null.json", b"null", ["null.json: the pose is null", "a list of frames"]),
    ("cut.json", _json.dumps(_POSE_A).encode()[:-7], ["cut.json is not valid JSON", "is the file complete?"]),
    ("deep.json", b"[" * 100000 + b"]" * 100000, ["deep.json is nested too deeply"]),
    ("huge.json", _json.dumps(_POSE_A).replace(str(_KPS_A[0]), "9" * 5000, 1).encode(),
     ["huge.json, person 0, pose_keypoints_2d[0] (keypoint 0's x)", "too large"]),
    ("inf.json", _json.dumps(_POSE_A).replace(str(_KPS_A[0]), "Infinity", 1).encode(),
     ["inf.json, person 0, pose_keypoints_2d[0]", "infinite"]),
    ("zero.json", _json.dumps([_frame(canvas_width=0)]).encode(), ["zero.json: canvas_width is 0"]),
    ("two.json", _json.dumps([_POSE_A[0], _frame(people=[{"pose_keypoints_2d": ["a"] * 54}])]).encode(), None),
    ("inf.txt", b"inf inf\n" + b"0.5 0.5\n" * 17, ["inf.txt: the line 'inf inf' holds an infinite value"]),
    ("anno.txt", b'a.jpg: [1, 2, "x"]: [3]', ["anno.txt, the annotation's y list[2]: the text 'x' is not a number"]),
    ("anno2.txt", b"a.jpg: [1, 2,]: [3]", ["anno2.txt: the annotation line's y list '[1, 2,]' is not a list"]),
]


@pytest.mark.parametrize("name, content, words", _BAD_FILES, ids=[case[0] for case in _BAD_FILES])
def test_a_bad_pose_file_is_one_pose_error_naming_the_file(tmp_path, name, content, words):
    from pcdms_core import PoseError, load_pose

    path = tmp_path / name
    path.write_bytes(content)
    with _warnings.catch_warnings():
        _warnings.simplefilter("error")
        if words is None:  # a bad second frame does not stop the first from loading
            assert load_pose(path, frame=0).num_visible == 17
            with pytest.raises(PoseError, match=re.escape("two.json, frame 1, person 0, pose_keypoints_2d[0]")):
                load_pose(path, frame=1)
            return
        with pytest.raises(PoseError) as err:
            load_pose(path)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_a_folder_given_as_a_pose_file_is_named(tmp_path):
    from pcdms_core import PoseError, load_pose

    with pytest.raises(PoseError, match="is a folder; give a .json or .txt keypoint file"):
        load_pose(tmp_path)


def test_pose_forms_that_can_work_give_the_same_pose(tmp_path):
    """Nested [x, y, c] triplets, a frame given alone, a float canvas of a whole size, numpy values, a UTF-8 file
    with a byte-order mark and a UTF-16 file: each is the same pose as the plain POSE_KEYPOINT file."""
    from pcdms_core import load_pose

    want = load_pose(_POSE_A)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + _json.dumps(_POSE_A).encode())
    (tmp_path / "utf16.json").write_bytes(_json.dumps(_POSE_A).encode("utf-16"))
    forms = [
        [_with_kps([_KPS_A[i:i + 3] for i in range(0, 54, 3)])],
        _POSE_A[0],
        [_frame(canvas_width=176.0, canvas_height=256.0)],
        [_with_kps(np.array(_KPS_A, dtype=np.float32).astype(np.float64))],
        [_frame(canvas_width=np.int64(176), canvas_height=np.int64(256))],
        tmp_path / "bom.json",
        tmp_path / "utf16.json",
    ]
    for form in forms:
        got = load_pose(form)
        assert got.canvas == want.canvas
        assert got.visible.tolist() == want.visible.tolist()
        np.testing.assert_allclose(got.xy, want.xy, atol=1e-6)


def test_missing_values_and_confidences_follow_the_rules():
    """null or NaN in a keypoint: that joint is missing; a confidence above 1 is a joint that is there, one of 0
    or below a missing joint."""
    from pcdms_core import load_pose

    want = load_pose(_POSE_A)
    for i, value in [(0, None), (1, float("nan")), (2, float("nan")), (2, 0.0), (2, -1.0)]:
        got = load_pose([_set(i, value)])
        assert got.visible.tolist() == [False] + want.visible.tolist()[1:], (i, value)
        assert got.num_visible == want.num_visible - 1
    big = load_pose([_with_kps([v * 3 if i % 3 == 2 else v for i, v in enumerate(_KPS_A)])])
    assert big.visible.tolist() == want.visible.tolist()
    np.testing.assert_allclose(big.xy, want.xy)


def test_a_person_without_keypoints_keeps_the_indices_of_the_file():
    from pcdms_core import PoseError, load_pose

    data = [_frame(people=[{"pose_keypoints_2d": None}, {"pose_keypoints_2d": _KPS_A}, {"pose_keypoints_2d": []}])]
    assert load_pose(data, person=1).num_visible == 17  # the second person of the file
    assert load_pose(data).num_visible == 17  # the largest
    with pytest.raises(PoseError, match="only 0 of 18 joints visible"):
        load_pose(data, person=0)
    with pytest.raises(PoseError, match="only 0 of 18 joints visible"):  # no joint: not a missing-canvas problem
        load_pose({"people": [{"pose_keypoints_2d": [0.0] * 54}]})


def test_several_frames_use_the_first_with_a_warning_or_the_one_asked_for(tmp_path):
    from pcdms_core import PCDMsWarning, load_pose

    moved = _with_kps([v + 10 if i % 3 == 0 else v for i, v in enumerate(_KPS_A)])
    path = tmp_path / "video.json"
    path.write_text(_json.dumps([_POSE_A[0], moved]))
    with pytest.warns(PCDMsWarning, match=r"video.json holds 2 frames; the first \(frame 0\) is used"):
        first = load_pose(path)
    np.testing.assert_allclose(first.xy, load_pose(_POSE_A).xy)
    with _warnings.catch_warnings():
        _warnings.simplefilter("error")
        second = load_pose(path, frame=1)  # asked for: no warning
        assert load_pose(_POSE_A[0]).num_visible == 17  # one frame: no warning
    assert second.xy[0, 0] == pytest.approx(first.xy[0, 0] + 10 / 176)


def test_every_error_and_warning_class_users_see_is_exported():
    import inspect

    import pcdms_core
    from pcdms_core import errors

    public = {name for name, obj in vars(errors).items()
              if inspect.isclass(obj) and issubclass(obj, (errors.PCDMsError, errors.PCDMsWarning))}
    assert {"NumericalError", "PCDMsWarning", "PoseError", "InputError", "CheckpointError"} <= public
    assert public | {"reported_warnings"} <= set(pcdms_core.__all__)
    assert all(getattr(pcdms_core, name) is getattr(errors, name) for name in public | {"reported_warnings"})
    assert all(hasattr(pcdms_core, name) for name in pcdms_core.__all__)


# the command line: a bad --source-pose is one "error:" line naming the file, before any model is looked at

@pytest.mark.parametrize("name, content, words", [
    ("skeleton.json", b"\x89PNG\r\n\x1a\n" + bytes(64), ["skeleton.json is a PNG image, not keypoints"]),
    ("text.json", _json.dumps([_with_kps(["1"] * 54)]).encode(),
     ["text.json, person 0, pose_keypoints_2d[0] (keypoint 0's x): the text '1' is not a number"]),
    ("canvas.json", _json.dumps([_frame(canvas_width=0)]).encode(), ["canvas.json: canvas_width is 0"]),
    ("people.json", _json.dumps({"people": "x"}).encode(), ["people.json: 'people' is the text 'x'"]),
    ("null.json", b"null", ["null.json: the pose is null"]),
    ("empty.txt", b"", ["empty.txt is empty"]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_cli_a_bad_source_pose_file_is_one_error_line(tmp_path, capsys, name, content, words):
    inputs = _PARITY / "inputs"
    pose = tmp_path / name
    pose.write_bytes(content)
    missing = tmp_path / "no_model.safetensors"  # never reached: the poses are read first
    rc, err = _cli(capsys, "generate", "--source", inputs / "src_a.png", "--source-pose", pose,
                   "--target-pose", inputs / "pose_t1.json", "--inpaint", missing, "--dino", missing, "--vae", missing,
                   "--out", tmp_path / "x.png")
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err


def test_cli_a_pose_file_with_several_frames_warns_and_goes_on(tmp_path, capsys):
    inputs = _PARITY / "inputs"
    pose = tmp_path / "video.json"
    pose.write_text(_json.dumps([_POSE_A[0], _POSE_A[0]]))
    missing = tmp_path / "no_model.safetensors"
    rc, err = _cli(capsys, "generate", "--source", inputs / "src_a.png", "--source-pose", pose,
                   "--target-pose", inputs / "pose_t1.json", "--inpaint", missing, "--dino", missing, "--vae", missing,
                   "--out", tmp_path / "x.png")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 2, err
    assert lines[0].startswith("warning: video.json holds 2 frames; the first (frame 0) is used")
    assert lines[1].startswith("error: --inpaint model not found")  # the pose was read: the next check speaks


# the node: PCDMs Load Pose gives the same one error (a PCDMsError, shown by ComfyUI as it is)

def test_load_pose_node_names_the_bad_file_and_the_fix(env):
    errors = env.pack.pcdms_core.errors
    cases = [
        ("skeleton.json", b"\x89PNG\r\n\x1a\n" + bytes(64), "skeleton.json is a PNG image, not keypoints"),
        ("text.json", _json.dumps([_with_kps(["1"] * 54)]).encode(),
         "text.json, person 0, pose_keypoints_2d[0] (keypoint 0's x): the text '1' is not a number"),
        ("dict.json", _json.dumps([_with_kps({"x": 1})]).encode(), "dict.json, person 0, pose_keypoints_2d is an object"),
        ("people.json", _json.dumps({"people": "x"}).encode(), "people.json: 'people' is the text 'x'"),
        ("person.json", _json.dumps({"people": [1]}).encode(), "person.json, person 0 is 1, not a person"),
        ("canvas.json", _json.dumps([_frame(canvas_width="a")]).encode(), "canvas.json: canvas_width is the text 'a'"),
        ("negative.json", _json.dumps([_frame(canvas_width=-1)]).encode(), "negative.json: canvas_width is -1"),
        ("null.json", b"null", "null.json: the pose is null"),
        ("empty.json", b"", "empty.json is empty"),
        ("blob.txt", bytes(range(256)), "blob.txt is a binary file"),
    ]
    for name, content, message in cases:
        (env.tmp / "input" / name).write_bytes(content)
        with _warnings.catch_warnings():
            _warnings.simplefilter("error")
            with pytest.raises(errors.PoseError) as err:
                run(env, "PCDMsLoadPose", pose_file=name, person=-1, canvas_width=0, canvas_height=0)
        assert message in str(err.value), str(err.value)
        assert isinstance(err.value, errors.PCDMsError)
    # a form that works: [x, y, c] triplets, one frame given alone
    (env.tmp / "input" / "nested.json").write_text(_json.dumps(_with_kps([_KPS_A[i:i + 3] for i in range(0, 54, 3)])))
    got = run(env, "PCDMsLoadPose", pose_file="nested.json", person=-1, canvas_width=0, canvas_height=0)[0]
    want = run(env, "PCDMsLoadPose", pose_file="pose_a.json", person=-1, canvas_width=0, canvas_height=0)[0]
    assert got == want


def test_a_strength_that_runs_no_step_is_refused_before_loading():
    from pcdms_core import InputError
    from pcdms_core.stages.loop import check_stage_settings

    with pytest.raises(InputError, match="leaves no step to run"):
        check_stage_settings("refine", steps=1, strength=0.4)
    check_stage_settings("refine", steps=5, strength=0.4)  # the last 2 of 5
