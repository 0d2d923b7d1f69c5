"""The two vision transformers PCDMs reads, written against the transformers 4.x weight layout.

* ``ClipVision``: CLIP's vision tower with its projection (``CLIPVisionModelWithProjection``): pre-LayerNorm
  encoder, CLS token through ``post_layernorm`` and ``visual_projection`` gives ``image_embeds``.
* ``Dinov2``: DINOv2 (``Dinov2Model``) with layer scale and an optional SwiGLU feed-forward; the final
  LayerNorm of every token gives ``last_hidden_state``.

They are written here rather than taken from transformers because transformers 5 renamed and split these
models' weights (and changed DINOv2's position-table interpolation), while the files users keep
(``models/clip_vision/*.safetensors``, the hub folders) stay in the 4.x layout. Keeping our own modules
means one layout, one set of numbers, whatever transformers version ComfyUI ships.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


def _attention(x: torch.Tensor, q: nn.Linear, k: nn.Linear, v: nn.Linear, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    hd = d // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, heads, hd).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q(x)), split(k(x)), split(v(x)))
    return out.transpose(1, 2).reshape(b, n, d)


# --- CLIP ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipVisionConfig:
    """Defaults: OpenCLIP ViT-H/14 (laion2B-s32B-b79K), the prior's encoder."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    projection_dim: int = 1024
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_dict(cls, d: dict) -> "ClipVisionConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


def _act(name: str):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name in ("gelu", "gelu_python"):
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    raise ValueError(f"unsupported activation {name!r}")


class _ClipEmbeddings(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(c.hidden_size))
        self.patch_embedding = nn.Conv2d(3, c.hidden_size, c.patch_size, stride=c.patch_size, bias=False)
        n = (c.image_size // c.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(n, c.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight[None]


class _ClipAttention(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        d = c.hidden_size
        self.heads = c.num_attention_heads
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(_attention(x, self.q_proj, self.k_proj, self.v_proj, self.heads))


class _FeedForward(nn.Module):
    """fc1 -> activation -> fc2 (CLIP's MLP, and DINOv2's when it does not use SwiGLU)."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.act = _act(act)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _ClipLayer(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.self_attn = _ClipAttention(c)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = _FeedForward(c.hidden_size, c.intermediate_size, c.hidden_act)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _ClipEncoder(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList([_ClipLayer(c) for _ in range(c.num_hidden_layers)])


class _ClipTransformer(nn.Module):
    def __init__(self, c: ClipVisionConfig):
        super().__init__()
        self.embeddings = _ClipEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)  # sic: the checkpoint's name
        self.encoder = _ClipEncoder(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class ClipVision(nn.Module):
    """``forward(pixels)`` gives ``image_embeds`` ``[B, projection_dim]`` (projected, not normalised)."""

    def __init__(self, config: ClipVisionConfig = ClipVisionConfig()):
        super().__init__()
        self.config = config
        self.vision_model = _ClipTransformer(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    @property
    def output_dim(self) -> int:
        return self.config.projection_dim

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        vm = self.vision_model
        h = vm.pre_layrnorm(vm.embeddings(pixels))
        for layer in vm.encoder.layers:
            h = layer(h)
        return self.visual_projection(vm.post_layernorm(h[:, 0]))


# --- DINOv2 --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dinov2Config:
    """Defaults: facebook/dinov2-giant, the encoder of stages 2 and 3."""

    hidden_size: int = 1536
    num_hidden_layers: int = 40
    num_attention_heads: int = 24
    patch_size: int = 14
    image_size: int = 518
    mlp_hidden_size: int = 4096  # SwiGLU: 2/3 of 4 x 1536, rounded up to a multiple of 8
    use_swiglu_ffn: bool = True
    hidden_act: str = "gelu"  # for the plain (non-SwiGLU) feed-forward
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    use_mask_token: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "Dinov2Config":
        d = dict(d)
        if "mlp_hidden_size" not in d and "hidden_size" in d:  # a transformers config.json
            hidden = int(d["hidden_size"] * d.get("mlp_ratio", 4))
            if d.get("use_swiglu_ffn", False):
                hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
            d["mlp_hidden_size"] = hidden
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


class _PatchEmbeddings(nn.Module):
    def __init__(self, c: Dinov2Config):
        super().__init__()
        self.projection = nn.Conv2d(3, c.hidden_size, c.patch_size, stride=c.patch_size)


class _Dinov2Embeddings(nn.Module):
    def __init__(self, c: Dinov2Config):
        super().__init__()
        self.patch_size = c.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        if c.use_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, c.hidden_size))
        n = (c.image_size // c.patch_size) ** 2 + 1
        self.position_embeddings = nn.Parameter(torch.zeros(1, n, c.hidden_size))
        self.patch_embeddings = _PatchEmbeddings(c)

    def position_table(self, height: int, width: int) -> torch.Tensor:
        """The position table for a ``height`` x ``width`` input, interpolated as transformers 4.3x did.

        Bicubic with a *scale factor* of (grid + 0.1) / native_grid (not a target size), in the parameters'
        dtype (the official demo ran it in fp16). transformers 5 resizes to the target size in fp32, which
        moves every output token.
        """
        table = self.position_embeddings
        native = table.shape[1] - 1
        gh, gw = height // self.patch_size, width // self.patch_size
        if gh * gw == native and gh == gw:
            return table
        side = int(math.sqrt(native))
        dim = table.shape[-1]
        h, w = gh + 0.1, gw + 0.1
        grid = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        scale = (float(h / math.sqrt(native)), float(w / math.sqrt(native)))
        try:
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
        except RuntimeError:  # no half-precision bicubic on this device: compute in fp32
            grid = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False).to(table.dtype)
        if grid.shape[-2:] != (gh, gw):
            raise RuntimeError(f"DINOv2 position interpolation gave {tuple(grid.shape[-2:])}, expected {(gh, gw)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([table[:, :1], grid], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        proj = self.patch_embeddings.projection
        patches = proj(pixels.to(proj.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(pixels.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_table(pixels.shape[-2], pixels.shape[-1])


class _SelfAttention(nn.Module):
    def __init__(self, c: Dinov2Config):
        super().__init__()
        d = c.hidden_size
        self.heads = c.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(d, d, bias=c.qkv_bias) for _ in range(3))


class _AttentionOutput(nn.Module):
    def __init__(self, c: Dinov2Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class _Attention(nn.Module):
    def __init__(self, c: Dinov2Config):
        super().__init__()
        self.attention = _SelfAttention(c)
        self.output = _AttentionOutput(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention
        return self.output.dense(_attention(x, a.query, a.key, a.value, a.heads))


class _LayerScale(nn.Module):
    def __init__(self, c: Dinov2Config):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(c.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class _SwiGLU(nn.Module):
    def __init__(self, c: Dinov2Config):
        super().__init__()
        self.weights_in = nn.Linear(c.hidden_size, 2 * c.mlp_hidden_size)
        self.weights_out = nn.Linear(c.mlp_hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.weights_in(x).chunk(2, dim=-1)
        return self.weights_out(F.silu(a) * b)


class _Dinov2Layer(nn.Module):
    def __init__(self, c: Dinov2Config):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.attention = _Attention(c)
        self.layer_scale1 = _LayerScale(c)
        self.norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = _SwiGLU(c) if c.use_swiglu_ffn else _FeedForward(c.hidden_size, c.mlp_hidden_size, c.hidden_act)
        self.layer_scale2 = _LayerScale(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class _Dinov2Encoder(nn.Module):
    def __init__(self, c: Dinov2Config):
        super().__init__()
        self.layer = nn.ModuleList([_Dinov2Layer(c) for _ in range(c.num_hidden_layers)])


class Dinov2(nn.Module):
    """``forward(pixels)`` gives ``last_hidden_state`` ``[B, 1 + patches, hidden]`` (final LayerNorm applied)."""

    def __init__(self, config: Dinov2Config = Dinov2Config()):
        super().__init__()
        self.config = config
        self.embeddings = _Dinov2Embeddings(config)
        self.encoder = _Dinov2Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def output_dim(self) -> int:
        return self.config.hidden_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(pixels)
        for layer in self.encoder.layer:
            h = layer(h)
        return self.layernorm(h)
