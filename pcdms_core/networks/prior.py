"""Stage 1, the prior: predict the target image's CLIP embedding from the source embedding and both poses.

The network (docs/faithfulness.md, Stage 1) is a transformer over six tokens, in this order: source pose, target pose, source
CLIP image embedding, timestep, noisy target embedding x_t, and a learned "predict" token. All tokens see
each other (no causal mask). The output token, after a final LayerNorm and a projection, is the clean target
embedding in normalised space (x0 prediction); ``to_clip_space`` maps it back with x * 0.415 - 0.016 (the
official statistics; a prior trained on another encoder's embeddings keeps its own in its config).

State-dict keys are the official ones, so an official stage-1 checkpoint loads with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn

from .. import diffusers_glue as glue
from .layers import PoseMLP

# Statistics of CLIP ViT-H/14 image embeddings that the prior's x0 space is normalised with. They are plain
# constants of the official class (not in its state dict).
CLIP_EMBED_MEAN = -0.016
CLIP_EMBED_STD = 0.415
POSE_VECTOR_SIZE = 36  # 18 OpenPose joints x (x, y)


@dataclass(frozen=True)
class PriorConfig:
    """Defaults are the official topology: Kandinsky 2.2's prior widened to 2048 with 20 blocks."""

    num_attention_heads: int = 32
    attention_head_dim: int = 64
    num_layers: int = 20
    embedding_dim: int = 1024
    num_embeddings: int = 2
    additional_embeddings: int = 4
    dropout: float = 0.0
    pose_dim: int = POSE_VECTOR_SIZE
    pose_hidden_dim: int = 512
    # the statistics the x0 space is normalised with (official: CLIP ViT-H/14's; other encoders have their own)
    embed_mean: float = CLIP_EMBED_MEAN
    embed_std: float = CLIP_EMBED_STD

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


class PriorTransformer(nn.Module):
    def __init__(self, config: PriorConfig = PriorConfig()):
        super().__init__()
        self.config = config
        inner = config.inner_dim
        emb = config.embedding_dim
        # Source- and target-pose encoders, each followed by its own projection to the token width.
        self.pose_encoder = PoseMLP(config.pose_dim, config.pose_hidden_dim, emb, config.dropout)
        self.pose_encoder1 = PoseMLP(config.pose_dim, config.pose_hidden_dim, emb, config.dropout)
        self.time_proj = glue.Timesteps(inner, True, 0)
        self.time_embedding = glue.TimestepEmbedding(inner, inner)
        self.proj_in = nn.Linear(emb, inner)  # noisy target embedding
        self.embedding_proj = nn.Linear(emb, inner)  # source image embedding
        self.encoder_hidden_states_proj = nn.Linear(emb, inner)  # source pose
        self.encoder_hidden_states_proj1 = nn.Linear(emb, inner)  # target pose
        n_tokens = config.num_embeddings + config.additional_embeddings
        self.positional_embedding = nn.Parameter(torch.zeros(1, n_tokens, inner))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, inner))
        self.transformer_blocks = nn.ModuleList(
            [
                glue.transformer_block(inner, config.num_attention_heads, config.attention_head_dim, config.dropout)
                for _ in range(config.num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(inner)
        self.proj_to_clip_embeddings = nn.Linear(inner, emb)

    def pose_tokens(self, source_pose: torch.Tensor, target_pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        src = self.encoder_hidden_states_proj(self.pose_encoder(source_pose))
        tgt = self.encoder_hidden_states_proj1(self.pose_encoder1(target_pose))
        return src, tgt

    def forward(
        self,
        noisy_embedding: torch.Tensor,
        timestep,
        source_embedding: torch.Tensor,
        source_pose: torch.Tensor,
        target_pose: torch.Tensor,
        *,
        pose_tokens: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Predict the clean, normalised target embedding ``[B, E]``.

        ``noisy_embedding`` and ``source_embedding`` are ``[B, E]`` or ``[B, 1, E]``; the poses ``[B, 36]`` or
        ``[B, 1, 36]`` (batch 1 is broadcast). ``pose_tokens`` replaces the two pose tokens (already projected),
        which is how the unconditional CFG branch is formed.
        """
        x = noisy_embedding if noisy_embedding.ndim == 3 else noisy_embedding[:, None]
        src_emb = source_embedding if source_embedding.ndim == 3 else source_embedding[:, None]
        batch = x.shape[0]
        dtype = self.proj_in.weight.dtype

        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.long, device=x.device)
        elif t.ndim == 0:
            t = t[None].to(x.device)
        t = t * torch.ones(batch, dtype=t.dtype, device=t.device)
        time_token = self.time_embedding(self.time_proj(t).to(dtype))[:, None]

        if pose_tokens is None:
            sp = source_pose if source_pose.ndim == 3 else source_pose[:, None]
            tp = target_pose if target_pose.ndim == 3 else target_pose[:, None]
            pose_tokens = self.pose_tokens(sp.to(dtype), tp.to(dtype))
        src_pose_tok, tgt_pose_tok = (p.expand(batch, -1, -1) if p.shape[0] == 1 else p for p in pose_tokens)

        tokens = torch.cat(
            [
                src_pose_tok,
                tgt_pose_tok,
                self.embedding_proj(src_emb.to(dtype)).expand(batch, -1, -1),
                time_token,
                self.proj_in(x.to(dtype)),
                self.prd_embedding.to(dtype).expand(batch, -1, -1),
            ],
            dim=1,
        )
        h = tokens + self.positional_embedding.to(dtype)
        for block in self.transformer_blocks:
            h = block(h)
        h = self.norm_out(h)[:, -1]
        return self.proj_to_clip_embeddings(h)


def to_clip_space(x: torch.Tensor, config: PriorConfig = PriorConfig()) -> torch.Tensor:
    """Normalised prior space to raw CLIP ``image_embeds`` space (the official ``post_process_latents``)."""
    return x * config.embed_std + config.embed_mean


def from_clip_space(e: torch.Tensor, config: PriorConfig = PriorConfig()) -> torch.Tensor:
    """Raw CLIP ``image_embeds`` to the prior's normalised space (the training target)."""
    return (e - config.embed_mean) / config.embed_std
