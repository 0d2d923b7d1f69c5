"""Loading the image encoders (CLIP ViT-H/14 for the prior, DINOv2-giant for stages 2 and 3) from
transformers-layout or OpenCLIP-layout files, with their size read from the tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import CheckpointError
from ..networks.encoders import ImageEncoder
from ..networks.vit import ClipVision, ClipVisionConfig, Dinov2, Dinov2Config
from .structure import built, read_sizes
from .weights import WeightFile, empty_weights, folder_weight_file, open_weights, read_json, strict_load

ENCODER_NAMES = {"clip": "a CLIP vision model (CLIP ViT-H/14)", "dinov2": "DINOv2 (dinov2-giant)"}
CLIP_PREFIXES = ("vision_model.", "visual_projection.")
_CLIP_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}
_DINO_HEADS = {384: 6, 768: 12, 1024: 16, 1536: 24}
TOLERATED_EXTRA = ("vision_model.embeddings.position_ids",)


def sniff_encoder_kind(keys) -> Optional[str]:
    """"clip", "dinov2", "openclip" (OpenCLIP's own layout) or None, from the tensor names."""
    ks = set(keys)
    if any(k.startswith("vision_model.embeddings.") for k in ks):
        return "clip"
    if "embeddings.cls_token" in ks and any(k.startswith("encoder.layer.") for k in ks):
        return "dinov2"
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in ks:
        return "openclip"
    return None


def openclip_to_transformers(w: WeightFile) -> WeightFile:
    """OpenCLIP's vision tower (``visual.*``) renamed to the transformers layout ``ClipVision`` reads."""
    out: dict[str, torch.Tensor] = {}
    rename = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    }
    layer_parts = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for key in w:
        if key in rename:
            out[rename[key]] = w[key]
        elif key == "visual.proj":
            out["visual_projection.weight"] = w[key].t().contiguous()
        elif key.startswith("visual.transformer.resblocks."):
            n, rest = key[len("visual.transformer.resblocks."):].split(".", 1)
            base = f"vision_model.encoder.layers.{n}."
            if rest.startswith("attn.in_proj_"):
                for name, part in zip(("q_proj", "k_proj", "v_proj"), w[key].chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{rest.rsplit('_', 1)[-1]}"] = part.contiguous()
            else:
                module, param = rest.rsplit(".", 1)
                if module in layer_parts:
                    out[f"{base}{layer_parts[module]}.{param}"] = w[key]
    return WeightFile.from_tensors(w.path, out, w.metadata, w.format)


def _count(keys, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)})


def _heads(hints: dict, presets: dict, hidden: int, what: str, name: str) -> int:
    """Attention heads cannot be read from weights: take them from a config, or from the standard models."""
    if "num_attention_heads" in hints:
        return int(hints["num_attention_heads"])
    if hidden in presets:
        return presets[hidden]
    raise CheckpointError(
        f"{name} is a {what} of width {hidden}, which is not a standard size, so its number of attention heads "
        "is unknown. Put its transformers config.json beside the file (as <name>.json) or load its folder."
    )


def clip_config_from_weights(w: WeightFile, hints: dict) -> ClipVisionConfig:
    """Sizes from the tensor shapes; heads, activation and eps from ``hints`` (a config.json) or the
    standard CLIP models (OpenAI ViT-B/L use quick_gelu, OpenCLIP ViT-H/bigG gelu)."""
    hidden = int(w.shapes["vision_model.embeddings.class_embedding"][0])
    patch = int(w.shapes["vision_model.embeddings.patch_embedding.weight"][-1])
    positions = int(w.shapes["vision_model.embeddings.position_embedding.weight"][0])
    layers = _count(w, "vision_model.encoder.layers.")
    openai_like = hidden in (768, 1024) and layers in (12, 24)
    return ClipVisionConfig(
        hidden_size=hidden,
        intermediate_size=int(w.shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]),
        num_hidden_layers=layers,
        num_attention_heads=_heads(hints, _CLIP_HEADS, hidden, "CLIP vision model", w.path.name),
        patch_size=patch,
        image_size=int(round(math.sqrt(positions - 1))) * patch,
        projection_dim=int(w.shapes["visual_projection.weight"][0]),
        hidden_act=hints.get("hidden_act", "quick_gelu" if openai_like else "gelu"),
        layer_norm_eps=float(hints.get("layer_norm_eps", 1e-5)),
    )


def dinov2_config_from_weights(w: WeightFile, hints: dict) -> Dinov2Config:
    hidden = int(w.shapes["embeddings.cls_token"][-1])
    patch = int(w.shapes["embeddings.patch_embeddings.projection.weight"][-1])
    positions = int(w.shapes["embeddings.position_embeddings"][1])
    swiglu = "encoder.layer.0.mlp.weights_in.weight" in w
    mlp_key = "encoder.layer.0.mlp.weights_out.weight" if swiglu else "encoder.layer.0.mlp.fc2.weight"
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=_count(w, "encoder.layer."),
        num_attention_heads=_heads(hints, _DINO_HEADS, hidden, "DINOv2 model", w.path.name),
        patch_size=patch,
        image_size=int(round(math.sqrt(positions - 1))) * patch,
        mlp_hidden_size=int(w.shapes[mlp_key][1]),
        use_swiglu_ffn=swiglu,
        hidden_act=hints.get("hidden_act", "gelu"),
        layer_norm_eps=float(hints.get("layer_norm_eps", 1e-6)),
        qkv_bias="encoder.layer.0.attention.attention.query.bias" in w,
        use_mask_token="embeddings.mask_token" in w,
    )


def _config_hints(path: Path) -> dict:
    """Settings from a transformers config.json (a full CLIPModel's vision part is used)."""
    cfg = read_json(path)
    if isinstance(cfg.get("vision_config"), dict):
        cfg = {**cfg["vision_config"], "projection_dim": cfg.get("projection_dim")}
    return {k: v for k, v in cfg.items() if v is not None}


def _resolve(path: Path) -> tuple[WeightFile, Optional[Path]]:
    """Weights and the config file that goes with them (a folder's config.json, or one beside the file)."""
    if path.is_dir():
        weights = folder_weight_file(path, ("model", "pytorch_model", "open_clip_pytorch_model"))
        if weights is None:
            raise CheckpointError(f"{path} has no model.safetensors or pytorch_model.bin")
        cfg = path / "config.json"
        return open_weights(weights), cfg if cfg.exists() else None
    for cand in (path.with_suffix(".json"), path.with_name(path.stem + ".config.json")):
        if cand.exists():
            return open_weights(path), cand
    return open_weights(path), None


def load_image_encoder(
    path,
    kind: Optional[str] = None,
    *,
    config: Optional[dict] = None,
    dtype: Optional[torch.dtype] = torch.float32,
    device=None,
) -> ImageEncoder:
    """Load CLIP's vision tower or DINOv2 from a transformers folder or a single weight file.

    The kind is told from the tensor names (``kind`` only checks it). Files in OpenCLIP's own layout are
    renamed on the fly. Sizes come from the tensor shapes; the number of heads, activation and eps from
    ``config``, a config.json (the folder's, or ``<name>.json`` beside a file), the file's own metadata
    (``pcdms.config``, as our safetensors write it), or the standard models' values (ViT-B/L/H/bigG, DINOv2
    small/base/large/giant).
    """
    path = Path(path)
    weights, config_path = _resolve(path)
    if config is None and config_path is not None:
        config = _config_hints(config_path)
    return image_encoder_from_weights(weights, kind, config=config, dtype=dtype, device=device)


def image_encoder_from_weights(
    weights: WeightFile,
    kind: Optional[str] = None,
    *,
    config: Optional[dict] = None,
    dtype: Optional[torch.dtype] = torch.float32,
    device=None,
) -> ImageEncoder:
    """``load_image_encoder`` for weights already open (for example another program's loaded model, given with
    ``WeightFile.from_tensors``): the same checks, sizes and defaults. ``dtype=None`` keeps the tensors as they
    are (no copy where they need no cast)."""
    path = weights.path
    found = sniff_encoder_kind(weights)
    if found is None:
        raise CheckpointError(
            f"{path.name} is not a CLIP vision or DINOv2 model ({len(weights)} tensors, e.g. "
            f"{', '.join(list(weights)[:3])}). PCDMs needs CLIP ViT-H/14 (prior) and DINOv2-giant (stages 2 and 3)."
        )
    if found == "openclip":
        weights, found = openclip_to_transformers(weights), "clip"
    if kind is not None and found != kind:
        raise CheckpointError(
            f"{path.name} is {ENCODER_NAMES[found]}, but {ENCODER_NAMES[kind]} was asked for: pick the other file"
        )
    if config is not None:
        hints = dict(config)
    else:
        hints = json.loads(weights.metadata.get("pcdms.config", "{}"))  # our own files carry their config
    read = clip_config_from_weights if found == "clip" else dinov2_config_from_weights
    model_config = read_sizes(lambda: read(weights, hints), path.name, ENCODER_NAMES[found])
    with empty_weights():
        network = ClipVision if found == "clip" else Dinov2
        model: nn.Module = built(lambda: network(model_config), ENCODER_NAMES[found], "the file and its config.json")
    # A full CLIPModel file also holds the text tower: only the vision part is read.
    names = [k for k in weights if k not in TOLERATED_EXTRA and (found != "clip" or k.startswith(CLIP_PREFIXES))]
    strict_load(
        model, weights, names, dtype=dtype, describe=ENCODER_NAMES[found],
        fix="Put the model's transformers config.json beside the file, or use its transformers folder.",
    )
    if device is not None:
        model.to(device)
    return ImageEncoder(model, found)


def save_image_encoder(encoder: ImageEncoder, path, dtype: Optional[torch.dtype] = None) -> Path:
    """Save an encoder as one ``.safetensors`` (transformers 4.x tensor names) with its config in the metadata."""
    from safetensors.torch import save_file

    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in encoder.model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"pcdms.config": json.dumps(encoder.model.config.to_dict()),
                                       "pcdms.kind": encoder.kind})
    return path
