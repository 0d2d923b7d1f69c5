"""Image metrics, as the PCDMs evaluation computes them.

* ``ssim``: the reported SSIM: Gaussian weights (sigma 1.2, truncated at 3.5 sigma, 'reflect' borders), population
  covariance, ``data_range`` = max - min of the *generated* image, per channel then averaged (scikit-image's
  ``structural_similarity`` with the official arguments, written out in torch).
* ``masked_colour_error``: mean absolute RGB error (0-255) inside a mask, here the target person's pixels.
* ``frechet_distance``: FID's distance between two feature sets (features from any backbone; the official code
  used torchvision's ImageNet Inception pool3 features).
* ``lpips``: only when the ``lpips`` package and its backbone weights are available locally.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F


def _gaussian_kernel(sigma: float = 1.2, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """scipy.ndimage's 'reflect' borders (d c b a | a b c d | d c b a) on the last two dims."""
    def along(t, dim):
        n = t.shape[dim]
        left = t.narrow(dim, 0, pad).flip(dim)
        right = t.narrow(dim, n - pad, pad).flip(dim)
        return torch.cat([left, t, right], dim=dim)

    return along(along(x, -1), -2)


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    pad = kernel.numel() // 2
    x = _reflect_pad(x, pad)
    c = x.shape[1]
    kx = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1).to(x)
    ky = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1).to(x)
    return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)


def ssim(pred: torch.Tensor, target: torch.Tensor, sigma: float = 1.2) -> torch.Tensor:
    """Per-image SSIM ``[B]`` of uint8 (or 0-255 float) images ``[B, 3, H, W]`` (see the module docstring)."""
    x = pred.double()
    y = target.double()
    kernel = _gaussian_kernel(sigma)
    pad = kernel.numel() // 2
    data_range = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).clamp_min(1e-8).view(-1, 1, 1, 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ux, uy = _blur(x, kernel), _blur(y, kernel)
    uxx, uyy, uxy = _blur(x * x, kernel), _blur(y * y, kernel), _blur(x * y, kernel)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    s = s[..., pad:-pad, pad:-pad]
    return s.mean(dim=(2, 3)).mean(dim=1)


def masked_colour_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute RGB error (0-255) over the pixels where ``mask`` ([B, H, W] bool) is set."""
    diff = (pred.double() - target.double()).abs().mean(dim=1)  # [B, H, W]
    m = mask.to(diff.dtype)
    return (diff * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` [N, D] and ``b`` [M, D]."""
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    # tr(sqrt(s1 s2)) through the symmetric form sqrt(s1)^(1/2) s2 sqrt(s1)^(1/2)
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    mid = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((mid + mid.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


def lpips_model() -> Optional[object]:
    """The LPIPS (AlexNet) metric if the ``lpips`` package and its weights are available locally, else None."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return None
    try:
        import lpips

        return lpips.LPIPS(net="alex", verbose=False)
    except Exception:  # weights missing and no network: not available
        return None


def lpips_distance(model, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LPIPS fed [0, 1] images, as the official evaluation did (not the [-1, 1] the library expects)."""
    with torch.no_grad():
        return model(pred.float() / 255, target.float() / 255).flatten()


def summarise(values: dict[str, list[float]]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in values.items()}
