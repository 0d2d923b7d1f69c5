"""Image conventions and the conversions the official preprocessing relies on.

Inside ``pcdms_core`` an image batch is a float tensor ``[B, 3, H, W]`` with values in [0, 1] (ComfyUI's
``IMAGE`` is the same data as ``[B, H, W, 3]``; the nodes permute). The official code works on 8-bit PIL
images: every resize is PIL bicubic on 8-bit pixels, and model inputs are ``(u8 / 255 - 0.5) / 0.5``.
These helpers reproduce exactly that, so a tensor that holds 8-bit values gives the official numbers.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .errors import InputError, pcdms_warn

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor, Sequence[Image.Image]]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to uint8 the way diffusers' postprocess does it: clamp, x 255 in fp32, round half to even."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


# PIL's modes for 16-bit (and 32-bit integer) grayscale, as 16-bit PNGs open: converting them to RGB clips
# every value above 255, so they are scaled to 8 bits first (65535 -> 255).
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    if img.mode in _WIDE_GRAY_MODES:
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":  # 32-bit float grayscale: taken as 0..1 when it fits, else as 0..255
        flt = np.nan_to_num(np.asarray(img, dtype=np.float64))
        flt = flt * 255.0 if flt.size and flt.max() <= 1.0 else flt
        img = Image.fromarray(np.clip(np.rint(flt), 0, 255).astype(np.uint8), "L")
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def as_uint8_batch(images: ImageLike) -> torch.Tensor:
    """Any accepted image form to a uint8 tensor ``[B, 3, H, W]``.

    Accepted: a PIL image or a list of them; a numpy array ``[H, W, C]`` or ``[B, H, W, C]`` (uint8, or floats
    in [0, 1]); a tensor ``[B, 3, H, W]`` or ``[3, H, W]`` (uint8, or floats in [0, 1]). RGBA drops alpha,
    grayscale is repeated to RGB, 16-bit grayscale is scaled to 8 bits, palette and CMYK images are converted,
    floats outside [0, 1] are clipped. Refused: an empty batch, an image of 0 pixels, NaN or infinite values.
    """
    return _not_empty(_as_uint8_batch(images))


def _not_empty(batch: torch.Tensor) -> torch.Tensor:
    if batch.shape[0] == 0:
        raise InputError("the image batch is empty (0 images): the node or step that made it gave no image")
    if batch.shape[-1] == 0 or batch.shape[-2] == 0:
        raise InputError(f"the image has no pixels ({batch.shape[-1]}x{batch.shape[-2]}): give a real image")
    return batch


def _as_uint8_batch(images: ImageLike) -> torch.Tensor:
    if isinstance(images, Image.Image):
        return _pil_to_tensor(images)[None]
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("an empty list of images was given")
        batches = [as_uint8_batch(im) for im in images]
        sizes = {tuple(b.shape[-2:]) for b in batches}
        if len(sizes) > 1:
            raise InputError(f"the images of one batch must share a size, got {sorted(sizes)}")
        return torch.cat(batches)
    if isinstance(images, np.ndarray):
        arr = images
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise InputError(f"a numpy image must be [H, W, C] or [B, H, W, C], got shape {images.shape}")
        images = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    if not torch.is_tensor(images):
        raise InputError(f"unsupported image type {type(images).__name__}: give a PIL image, an array or a tensor")
    x = images
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InputError(f"an image tensor must be [B, C, H, W] or [C, H, W], got shape {tuple(images.shape)}")
    channels = x.shape[1]
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels == 4:
        x = x[:, :3]
    elif channels != 3:
        raise InputError(
            f"an image tensor needs 1, 3 or 4 channels in dim 1 ([B, C, H, W]), got shape {tuple(images.shape)}"
        )
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not torch.is_floating_point(x):
        raise InputError(f"image values must be uint8 or floats in [0, 1], got dtype {x.dtype}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise InputError(
            "the image holds NaN or infinite values: the node or step that made it failed (often half precision "
            "that overflowed); make it again, with its models in fp32 or bf16"
        )
    return to_uint8(x)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    u8 = images if images.dtype == torch.uint8 else to_uint8(images)
    if u8.ndim == 3:
        u8 = u8[None]
    return [Image.fromarray(im.permute(1, 2, 0).cpu().numpy()) for im in u8]


def resize_u8(images: torch.Tensor, size: tuple[int, int], resample=Image.BICUBIC) -> torch.Tensor:
    """PIL resize of a uint8 batch to ``size = (width, height)`` (the official stretch: no crop, no pad)."""
    w, h = size
    if tuple(images.shape[-2:]) == (h, w):
        return images
    out = [
        _pil_to_tensor(Image.fromarray(im.permute(1, 2, 0).cpu().numpy()).resize((w, h), resample))
        for im in images
    ]
    return torch.stack(out)


def to_model_range(u8: torch.Tensor) -> torch.Tensor:
    """uint8 to the [-1, 1] model input, op for op like ToTensor + Normalize([0.5], [0.5])."""
    return u8.float().div(255).sub(0.5).div(0.5)


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Concatenate two equal-sized batches along the width (the stage-2 canvas)."""
    if left.shape != right.shape:
        raise InputError(f"side-by-side halves differ in shape: {tuple(left.shape)} vs {tuple(right.shape)}")
    return torch.cat([left, right], dim=-1)


def check_size(size: Iterable[int], multiple: int, what: str) -> tuple[int, int]:
    """A ``(width, height)`` pair of positive multiples of ``multiple``."""
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a (width, height) pair, got {size!r}") from None
    if w <= 0 or h <= 0 or w % multiple or h % multiple:
        raise InputError(
            f"{what} {w}x{h} is not usable: width and height must be positive multiples of {multiple} "
            f"for these models (for example {max(multiple, (w // multiple) * multiple)}x"
            f"{max(multiple, (h // multiple) * multiple)})"
        )
    return w, h


# --- inputs used the official way but distorted: said, not refused ------------------------------------------------

STRETCH_LIMIT = 2.0  # proportions changed more than this many times (DeepFashion's 176 x 256 to 512 x 512: 1.45)
ENLARGE_LIMIT = 4.0  # enlarged more than this many times in width or height (a 128 px source at 512)


def size_warnings(size: tuple[int, int], working: tuple[int, int], what: str) -> list[str]:
    """What is worth saying when an image of ``size`` = (W, H) is stretched to ``working`` = (W, H), as the
    official preprocessing does (no crop, no pad): its proportions changed more than ``STRETCH_LIMIT`` times, or
    it is enlarged more than ``ENLARGE_LIMIT`` times. Empty when neither."""
    (w, h), (ww, wh) = (int(v) for v in size), (int(v) for v in working)
    out = []
    change = (w / h) / (ww / wh)
    factor = max(change, 1 / change)
    if factor > STRETCH_LIMIT:
        out.append(
            f"the {what} ({w}x{h}) is stretched to the working size {ww}x{wh}, which changes its proportions "
            f"{factor:.1f} times (the official preprocessing stretches, it does not crop): the person comes out "
            f"{'squeezed' if change > 1 else 'widened'}. Crop it nearer to {ww}:{wh} first."
        )
    enlarge = max(ww / w, wh / h)
    if enlarge > ENLARGE_LIMIT:
        out.append(
            f"the {what} ({w}x{h}) is enlarged {enlarge:.0f} times to the working size {ww}x{wh}, so it holds "
            f"little detail for the models; use an image of at least {math.ceil(ww / ENLARGE_LIMIT)}x"
            f"{math.ceil(wh / ENLARGE_LIMIT)} pixels."
        )
    return out


def resize_back_warnings(size: tuple[int, int], working: tuple[int, int], what: str) -> list[str]:
    """Stage 3 works at the size the source was encoded at: an image of any other size is resized to it."""
    (w, h), (ww, wh) = (int(v) for v in size), (int(v) for v in working)
    if (w, h) == (ww, wh):
        return []
    lost = " (detail beyond it is lost: upscale after refining, not before)" if w > ww or h > wh else ""
    return [f"the {what} ({w}x{h}) is resized to the working size {ww}x{wh} the source was encoded at{lost}."] + [
        m for m in size_warnings((w, h), (ww, wh), what) if "stretched" in m]


def warn(messages: Iterable[str]) -> None:
    """Issue each message as a ``PCDMsWarning`` (the command line prints them once on stderr; the ComfyUI nodes
    log them and show them on the node)."""
    for message in messages:
        pcdms_warn(message, stacklevel=2)


def image_size(batch: torch.Tensor) -> tuple[int, int]:
    """(W, H) of a ``[B, C, H, W]`` batch."""
    return int(batch.shape[-1]), int(batch.shape[-2])
