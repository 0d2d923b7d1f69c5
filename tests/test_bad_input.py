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
    assert isinstance(torch.nn.Linear(2, 2).weight.device, torch.device)  # empty_weights was undone
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


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
