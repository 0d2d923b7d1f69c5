"""Small modules shared by the stages, with the official state-dict key names.

* ``ImageProjector``: the per-token MLP that maps DINOv2 tokens into the UNets' cross-attention width
  (``image_proj_model_p`` in the paper stages, ``image_proj_model`` in the no-prior checkpoint).
* ``PoseMLP``: the prior's keypoint encoder (36 numbers to one embedding).
* ``PoseEncoder``: the stage-2 pose-image encoder (``pose_proj``), a ControlNet-style conditioning
  embedding whose output is added to the UNet's first feature map.

Their sizes are read back from tensor shapes by the ``*_config_from_shapes`` helpers, so a checkpoint of
any width loads without a config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ProjectorConfig:
    in_dim: int = 1536  # DINOv2-giant width
    hidden_dim: int = 768
    out_dim: int = 1024  # SD 2.1 cross-attention width


class ImageProjector(nn.Module):
    """Linear -> GELU -> Dropout -> LayerNorm -> Linear -> Dropout, applied to every token.

    ``operations`` supplies the layer classes (``Linear``, ``LayerNorm``; default ``torch.nn``), so a host such as
    ComfyUI can build the same network from its own casting layers; ``dtype`` and ``device`` are passed to them.
    """

    def __init__(self, config: ProjectorConfig = ProjectorConfig(), operations=None, dtype=None, device=None):
        super().__init__()
        ops = operations or nn
        kw = dict(dtype=dtype, device=device)
        self.config = config
        self.net = nn.Sequential(
            ops.Linear(config.in_dim, config.hidden_dim, **kw),
            nn.GELU(),
            nn.Dropout(0.0),
            ops.LayerNorm(config.hidden_dim, **kw),
            ops.Linear(config.hidden_dim, config.out_dim, **kw),
            nn.Dropout(0.0),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


def projector_config_from_shapes(shapes: Mapping[str, tuple], prefix: str = "") -> ProjectorConfig:
    hidden, in_dim = shapes[prefix + "net.0.weight"]
    out_dim = shapes[prefix + "net.4.weight"][0]
    return ProjectorConfig(in_dim=int(in_dim), hidden_dim=int(hidden), out_dim=int(out_dim))


class PoseMLP(nn.Module):
    """The prior's pose encoder: Linear -> GELU -> Dropout -> LayerNorm -> Linear -> Dropout -> LayerNorm."""

    def __init__(self, in_dim: int = 36, hidden_dim: int = 512, out_dim: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, out_dim),
            nn.Dropout(dropout),
            nn.LayerNorm(out_dim),
        )

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        return self.net(pose)


@dataclass(frozen=True)
class PoseEncoderConfig:
    out_channels: int = 320  # the UNet's first block width
    in_channels: int = 3
    widths: tuple[int, ...] = (16, 32, 96, 256)


class PoseEncoder(nn.Module):
    """Pose image (in [-1, 1]) to features at 1/8 resolution, added to the UNet right after ``conv_in``.

    conv_in, then for every width step a 3x3 conv and a stride-2 3x3 conv, each followed by SiLU; conv_out has
    no activation (it is zero-initialised for training). ``operations``, ``dtype``, ``device``: as for
    ``ImageProjector`` (the layer class used is ``Conv2d``).
    """

    def __init__(self, config: PoseEncoderConfig = PoseEncoderConfig(), operations=None, dtype=None, device=None):
        super().__init__()
        ops = operations or nn
        kw = dict(kernel_size=3, padding=1, dtype=dtype, device=device)
        self.config = config
        w = config.widths
        self.conv_in = ops.Conv2d(config.in_channels, w[0], **kw)
        blocks = []
        for c_in, c_out in zip(w[:-1], w[1:]):
            blocks.append(ops.Conv2d(c_in, c_in, **kw))
            blocks.append(ops.Conv2d(c_in, c_out, stride=2, **kw))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = ops.Conv2d(w[-1], config.out_channels, **kw)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.config.widths) - 1)

    def forward(self, pose_image: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(pose_image))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


def pose_encoder_config_from_shapes(shapes: Mapping[str, tuple], prefix: str = "") -> PoseEncoderConfig:
    w0, in_ch = shapes[prefix + "conv_in.weight"][:2]
    blocks = prefix + "blocks."
    n_blocks = len({k[len(blocks):].split(".")[0] for k in shapes if k.startswith(blocks)})
    widths = [int(w0)]
    for i in range(1, n_blocks, 2):
        widths.append(int(shapes[f"{blocks}{i}.weight"][0]))
    return PoseEncoderConfig(
        out_channels=int(shapes[prefix + "conv_out.weight"][0]), in_channels=int(in_ch), widths=tuple(widths)
    )
