"""Image encoders and the VAE from every file form users keep: transformers / diffusers folders, single
safetensors files (ComfyUI's models/clip_vision and models/vae), OpenCLIP and original-LDM layouts."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pcdms_core.loading.encoders import load_image_encoder
from pcdms_core.errors import CheckpointError
from pcdms_core.loading.vae import load_vae

from helpers import PARITY


def _single_file(tmp_path, folder: str, name: str, with_config: bool):
    path = tmp_path / f"{name}.safetensors"
    shutil.copy(PARITY / folder / "model.safetensors", path)
    if with_config:
        shutil.copy(PARITY / folder / "config.json", tmp_path / f"{name}.json")
    return path


@pytest.mark.parametrize("folder, kind", [("clip_vision", "clip"), ("dinov2", "dinov2")])
def test_single_file_needs_its_config_when_not_a_standard_size(tmp_path, models, inputs, folder, kind):
    bare = _single_file(tmp_path, folder, "bare", with_config=False)
    with pytest.raises(CheckpointError, match="number of attention heads is unknown"):
        load_image_encoder(bare)
    enc = load_image_encoder(_single_file(tmp_path, folder, "tiny", with_config=True), kind)
    img = inputs("src_a.png")
    assert torch.equal(enc.encode(img), models(folder).encode(img))


def _to_openclip(sd: dict) -> dict:
    """transformers CLIP vision keys -> OpenCLIP's ``visual.*`` layout (what some downloads use)."""
    out = {
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
        "logit_scale": torch.tensor(4.6),
    }
    for a, b in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"visual.{b}.{p}"] = sd[f"vision_model.{a}.{p}"]
    layers = {int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers.")}
    for n in layers:
        src = f"vision_model.encoder.layers.{n}."
        dst = f"visual.transformer.resblocks.{n}."
        for p in ("weight", "bias"):
            out[dst + f"attn.in_proj_{p}"] = torch.cat([sd[src + f"self_attn.{q}_proj.{p}"] for q in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[dst + f"{b}.{p}"] = sd[src + f"{a}.{p}"]
    return out


def test_openclip_layout_is_renamed(tmp_path, models, inputs):
    sd = load_file(str(PARITY / "clip_vision" / "model.safetensors"))
    save_file(_to_openclip(sd), str(tmp_path / "open_clip.safetensors"))
    (tmp_path / "open_clip.json").write_text(json.dumps({"num_attention_heads": 2}))
    enc = load_image_encoder(tmp_path / "open_clip.safetensors", "clip")
    img = inputs("src_b.png")
    torch.testing.assert_close(enc.encode(img), models("clip_vision").encode(img), atol=1e-6, rtol=1e-5)


def test_full_clip_model_file_reads_the_vision_part(tmp_path, models, inputs):
    sd = load_file(str(PARITY / "clip_vision" / "model.safetensors"))
    sd["text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 16)
    sd["text_projection.weight"] = torch.zeros(1024, 16)
    sd["logit_scale"] = torch.tensor(4.6)
    sd["vision_model.embeddings.position_ids"] = torch.arange(257)[None]  # older exports keep this buffer
    save_file(sd, str(tmp_path / "clip_full.safetensors"))
    shutil.copy(PARITY / "clip_vision" / "config.json", tmp_path / "clip_full.json")
    enc = load_image_encoder(tmp_path / "clip_full.safetensors")
    assert all(torch.equal(v, models("clip_vision").state_dict()[k]) for k, v in enc.state_dict().items())


def test_encoder_kind_and_non_encoder_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a CLIP vision model .* but DINOv2 .* was asked for"):
        load_image_encoder(PARITY / "clip_vision", "dinov2")
    with pytest.raises(CheckpointError, match="is not a CLIP vision or DINOv2 model"):
        load_image_encoder(PARITY / "vae" / "diffusion_pytorch_model.safetensors")


def test_encoder_dtype():
    enc = load_image_encoder(PARITY / "dinov2", dtype=torch.float16)
    assert next(enc.parameters()).dtype == torch.float16 and enc.output_dim == 32


# --- VAE --------------------------------------------------------------------------------------------------------

def _to_ldm(sd: dict, n_blocks: int) -> dict:
    """diffusers AutoencoderKL keys -> the original LDM layout of SD VAE files (models/vae)."""
    out = {}
    for k, v in sd.items():
        k2 = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k2 = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k2)
        k2 = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k2)
        k2 = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                    lambda m: f"decoder.up.{n_blocks - 1 - int(m.group(1))}.block.", k2)
        k2 = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                    lambda m: f"decoder.up.{n_blocks - 1 - int(m.group(1))}.upsample.", k2)
        k2 = k2.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        k2 = k2.replace("mid_block.attentions.0.group_norm", "mid.attn_1.norm")
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            if f"mid_block.attentions.0.{a}." in k2:
                k2 = k2.replace(f"mid_block.attentions.0.{a}", f"mid.attn_1.{b}")
                if v.ndim == 2:
                    v = v[:, :, None, None]  # LDM keeps these as 1x1 convolutions
        out["first_stage_model." + k2] = v
    return out


def test_vae_single_files(tmp_path, models):
    ref = models("vae").state_dict()
    config = json.loads((PARITY / "vae" / "config.json").read_text())
    # diffusers layout in one file, config beside it
    shutil.copy(PARITY / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae.safetensors")
    shutil.copy(PARITY / "vae" / "config.json", tmp_path / "vae.json")
    single = load_vae(tmp_path / "vae.safetensors")
    assert all(torch.equal(single.state_dict()[k], v) for k, v in ref.items())
    # original LDM layout (as inside a whole SD checkpoint: first_stage_model.*)
    ldm = _to_ldm(load_file(str(PARITY / "vae" / "diffusion_pytorch_model.safetensors")), len(config["block_out_channels"]))
    ldm["model.diffusion_model.conv_in.weight"] = torch.zeros(1)  # other parts of the checkpoint are ignored
    save_file(ldm, str(tmp_path / "sd_ldm.safetensors"))
    loaded = load_vae(tmp_path / "sd_ldm.safetensors", config=config)
    assert all(torch.equal(loaded.state_dict()[k], v.reshape(loaded.state_dict()[k].shape)) for k, v in ref.items())


def test_vae_errors(tmp_path):
    with pytest.raises(CheckpointError, match="is not a VAE"):
        load_vae(PARITY / "clip_vision" / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not load into"):
        load_vae(PARITY / "vae" / "diffusion_pytorch_model.safetensors")  # tiny file, SD 2.1 defaults
