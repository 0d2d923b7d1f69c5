"""Loading, recognising, converting and describing checkpoints; the errors users see for bad files."""

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pcdms_core import diffusers_glue as _compat
from pcdms_core.loading import checkpoints
from pcdms_core.loading.checkpoints import SD21_BASE_UNET, convert_checkpoint, inspect_checkpoint, load_checkpoint
from pcdms_core.errors import CheckpointError
from pcdms_core.networks.inpaint import InpaintModel
from pcdms_core.networks.layers import ImageProjector, PoseEncoder, PoseEncoderConfig, ProjectorConfig
from pcdms_core.networks.prior import PriorConfig, PriorTransformer
from pcdms_core.networks.refine import RefineModel

from helpers import CONFIGS, PARITY, fill_random, save_deepspeed

LAYOUTS = [("s1", "prior", "prior"), ("s2_paper", "inpaint", "paper"), ("s2_demo", "inpaint", "noprior"), ("s3", "refine", "refine")]


def _official(name: str) -> dict:
    return torch.load(PARITY / "checkpoints" / f"{name}.pt", map_location="cpu", weights_only=True)["module"]


@pytest.mark.parametrize("name, stage, variant", LAYOUTS)
def test_official_layouts_load_strictly_and_are_recognised(models, name, stage, variant):
    model = models(name)
    info = model.checkpoint_info
    assert (info.stage, info.variant) == (stage, variant)
    official = _official(name)
    ours = model.state_dict()
    assert set(ours) == set(official)  # every key, no extras: strict in both directions
    for k, v in official.items():
        assert torch.equal(ours[k], v), k


@pytest.mark.parametrize("name, stage, variant", LAYOUTS)
def test_safetensors_round_trip(tmp_path, models, name, stage, variant):
    src = tmp_path / f"{name}.pt"
    shutil.copy(PARITY / "checkpoints" / f"{name}.pt", src)
    out = convert_checkpoint(src, config=CONFIGS[name])
    assert out == tmp_path / f"{name}.safetensors"
    tensors = load_file(str(out))
    official = _official(name)
    assert set(tensors) == set(official)
    assert all(torch.equal(tensors[k], official[k]) for k in official)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert (meta["pcdms.stage"], meta["pcdms.variant"]) == (stage, variant)
    # The config travels in the metadata: the file loads with no config argument and gives the same model.
    again = load_checkpoint(out)
    assert again.checkpoint_info.config_source == "file metadata"
    assert all(torch.equal(again.state_dict()[k], v) for k, v in models(name).state_dict().items())


def test_conversion_keeps_fp16_and_loading_can_keep_or_cast_it(tmp_path):
    src = save_deepspeed(tmp_path / "s3_fp16.pt", _official("s3"), dtype=torch.float16)
    out = convert_checkpoint(src, tmp_path / "converted" / "s3.safetensors", config=CONFIGS["s3"])
    assert {v.dtype for v in load_file(str(out)).values()} == {torch.float16}
    assert next(load_checkpoint(out, dtype=None).parameters()).dtype == torch.float16
    assert next(load_checkpoint(out).parameters()).dtype == torch.float32
    info = inspect_checkpoint(out)
    assert "float16" in info.dtypes and info.stage == "refine"


def test_deepspeed_folder_and_sidecar_config(tmp_path):
    folder = tmp_path / "stage3_checkpoints" / "512"
    folder.mkdir(parents=True)
    shutil.copy(PARITY / "checkpoints" / "s3.pt", folder / "mp_rank_00_model_states.pt")
    shutil.copy(CONFIGS["s3"], folder / "config.json")
    model = load_checkpoint(folder)
    assert isinstance(model, RefineModel)
    assert model.checkpoint_info.config_source == "config.json"


def test_a_shared_unet_config_serves_stages_2_and_3(tmp_path):
    """in_channels and the class embedding are read from the file, so one UNet config fits both."""
    for name in ("s2_paper", "s3"):
        shutil.copy(PARITY / "checkpoints" / f"{name}.pt", tmp_path / f"{name}.pt")
    shutil.copy(CONFIGS["s2_demo"], tmp_path / "config.json")  # in_channels 9, no class embedding
    assert load_checkpoint(tmp_path / "s2_paper.pt").checkpoint_info.variant == "paper"
    assert load_checkpoint(tmp_path / "s3.pt").checkpoint_info.variant == "refine"


def test_official_defaults_are_the_official_topology():
    """Built on the meta device: the parameter counts of the released files (spec §6.1)."""
    from pcdms_core.loading.weights import empty_weights

    with empty_weights():
        prior = PriorTransformer()
        pose, proj = PoseEncoder(), ImageProjector()
    unet = _compat.build_unet({**SD21_BASE_UNET, "in_channels": 9, "class_embed_type": "projection",
                               "projection_class_embeddings_input_dim": 1024})
    assert sum(p.numel() for p in prior.parameters()) == 1_027_166_208
    assert sum(p.numel() for m in (unet, pose, proj) for p in m.parameters()) == 871_932_692
    assert prior.positional_embedding.shape == (1, 6, 2048)
    assert unet.conv_in.weight.shape == (320, 9, 3, 3)


# --- other tiny configurations, through the same code ----------------------------------------------------------------

TINY_UNET = dict(
    SD21_BASE_UNET,
    block_out_channels=[16, 32],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    attention_head_dim=[2, 4],
    layers_per_block=2,
    norm_num_groups=8,
    cross_attention_dim=64,
    sample_size=8,
)


def _materialise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    return fill_random(module.to_empty(device="cpu"), seed)


def _tiny_inpaint(variant: str, seed: int) -> InpaintModel:
    cfg = dict(TINY_UNET, in_channels=9)
    if variant == "paper":
        cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=64)
    unet = _compat.build_unet(cfg)
    pose = PoseEncoder(PoseEncoderConfig(out_channels=16, widths=(8, 16, 24, 32)))
    proj = ImageProjector(ProjectorConfig(in_dim=48, hidden_dim=24, out_dim=64))
    return _materialise(InpaintModel(unet, pose, proj, variant), seed)


@pytest.mark.parametrize("variant", ["paper", "noprior"])
def test_other_tiny_stage2_configs_load_and_match(tmp_path, variant):
    model = _tiny_inpaint(variant, seed=3)
    path = save_deepspeed(tmp_path / "tiny.pt", model.state_dict())
    (tmp_path / "tiny.json").write_text(json.dumps({k: v for k, v in TINY_UNET.items()}))
    loaded = load_checkpoint(path)
    assert loaded.variant == variant and loaded.checkpoint_info.config_source == "tiny.json"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 8, 16, generator=gen)
    ctx = torch.randn(2, 5, 64, generator=gen)
    pose = model.pose_proj(torch.randn(1, 3, 64, 128, generator=gen))
    labels = torch.randn(2, 64, generator=gen) if variant == "paper" else None
    t = torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, ctx, pose, labels), model(x, t, ctx, pose, labels))


def test_other_tiny_prior_and_refine_configs(tmp_path):
    cfg = PriorConfig(num_attention_heads=4, attention_head_dim=4, num_layers=3, embedding_dim=64)
    prior = _materialise(PriorTransformer(cfg), seed=4)
    save_deepspeed(tmp_path / "prior.pt", prior.state_dict())
    (tmp_path / "prior.json").write_text(json.dumps(cfg.to_dict()))
    loaded = load_checkpoint(tmp_path / "prior.pt", expect="prior")
    args = (torch.randn(3, 64), torch.tensor([1, 2, 3]), torch.randn(3, 64), torch.rand(3, 36), torch.rand(3, 36))
    with torch.no_grad():
        assert torch.equal(loaded(*args), prior(*args))

    unet = _compat.build_unet(dict(TINY_UNET, in_channels=8))
    refine = _materialise(RefineModel(unet, ImageProjector(ProjectorConfig(48, 24, 64))), seed=5)
    save_deepspeed(tmp_path / "refine.pt", refine.state_dict())
    loaded = load_checkpoint(tmp_path / "refine.pt", config={"unet": TINY_UNET})
    assert loaded.checkpoint_info.variant == "refine"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in refine.state_dict().items())


# --- errors --------------------------------------------------------------------------------------------------------

def test_another_stage_is_refused_with_the_stage_named():
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(PARITY / "checkpoints" / "s3.pt", config=CONFIGS["s3"], expect="inpaint")
    msg = str(err.value)
    assert "s3.pt is a stage-3 refining checkpoint" in msg and "stage-2 inpainting" in msg


def test_mismatched_config_explains_what_the_file_looks_like():
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(PARITY / "checkpoints" / "s2_paper.pt")  # tiny file, official-size defaults
    msg = str(err.value)
    assert "stage-2 inpainting (paper" in msg
    assert "tensors missing from the file" in msg and "other shapes" in msg
    assert "unet.conv_in.weight: file [8, 9, 3, 3] vs model [320, 9, 3, 3]" in msg
    assert "config.json" in msg and len(msg.splitlines()) <= 6


def test_a_config_for_another_network_is_refused():
    with pytest.raises(CheckpointError, match="does not describe the prior's transformer"):
        load_checkpoint(PARITY / "checkpoints" / "s1.pt", config=CONFIGS["s3"])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_files(tmp_path, suffix):
    src = PARITY / "checkpoints" / "s3.pt"
    if suffix == ".safetensors":
        src = convert_checkpoint(src, tmp_path / "full.safetensors", config=CONFIGS["s3"])
    data = src.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(cut, config=CONFIGS["s3"])
    assert "cut" + suffix in str(err.value)
    assert "truncated" in str(err.value) or "damaged" in str(err.value)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"module": {"x": payload}}, fh)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    assert "needs more than plain weights" in str(err.value) and "safetensors" in str(err.value)


def test_a_pickle_with_custom_classes_is_refused(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"module": _official("s3"), "args": argparse_namespace()}, path)
    with pytest.raises(CheckpointError, match="convert it"):
        load_checkpoint(path, config=CONFIGS["s3"])


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=1e-4)


def test_non_pcdms_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="it is a VAE"):
        load_checkpoint(PARITY / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="CLIP vision model"):
        load_checkpoint(PARITY / "clip_vision" / "model.safetensors")
    with pytest.raises(CheckpointError, match="DINOv2"):
        load_checkpoint(PARITY / "dinov2" / "model.safetensors")
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a PCDMs checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_parts_that_fit_no_variant(tmp_path):
    sd = _official("s2_paper")
    sd = {k: v for k, v in sd.items() if not k.startswith("unet.class_embedding.")}
    save_deepspeed(tmp_path / "odd.pt", sd)
    with pytest.raises(CheckpointError, match="resembles a PCDMs stage 2 checkpoint"):
        load_checkpoint(tmp_path / "odd.pt")


def test_describe_names_the_stage_in_the_papers_words():
    text = checkpoints.describe(inspect_checkpoint(PARITY / "checkpoints" / "s2_demo.pt", config=CONFIGS["s2_demo"]))
    assert "without the prior" in text and "518,292" in text and "float32" in text and "in_channels 9" in text
    text = checkpoints.describe(inspect_checkpoint(PARITY / "checkpoints" / "s1.pt", config=CONFIGS["s1"]))
    assert "prior" in text and "2 blocks" in text
