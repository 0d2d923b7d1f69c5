"""Structure checks at load time: a file or config that cannot make a working model is refused here, with the
tensor or setting named and the fix, before diffusers or torch would fail with a traceback.

* ``shape_of`` / ``read_sizes``: a tensor the loader reads a size from is missing or has the wrong rank;
* ``check_unet_inputs``: the UNet's ``conv_in`` takes the wrong number of channels for its stage (stage 2:
  noisy latents + mask + masked-image latents, 9 for the official VAE; stage 3: noisy + coarse latents, 8);
* ``check_unet_config`` / ``check_prior_config``: a config with impossible values (a string where a number
  goes, sizes of 0 or less, lists of different lengths, group-norm or attention-head counts that do not divide
  the channel widths);
* ``built``: anything else the network's constructor rejects, as one ``CheckpointError``;
* ``check_parts``: the parts of a stage file that must fit each other (the projector's output and the UNet's
  cross-attention width, the pose encoder's output and the UNet's first block).

Every tensor's shape against the model built from the config is ``weights.strict_load``'s check; NaN and
infinite weights are refused there too.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, Optional, TypeVar

from ..errors import CheckpointError

T = TypeVar("T")

CONFIG_FIX = ("Correct or remove that config (a diffusers save_config of the file's network), or use the official "
              "file, which needs none.")


def shape_of(shapes: Mapping[str, tuple], key: str, rank: Optional[int], file: str, needed_for: str) -> tuple:
    """The shape of tensor ``key`` (of rank ``rank`` when given), or a ``CheckpointError`` naming it."""
    if key not in shapes:
        raise CheckpointError(
            f"{file} has no tensor {key!r}, which {needed_for} is read from: the file is incomplete (cut short, or "
            "saved from another model). Download or convert it again."
        )
    shape = tuple(int(d) for d in shapes[key])
    if rank is not None and len(shape) != rank:
        raise CheckpointError(
            f"{file}: tensor {key!r} has shape {list(shape)} ({len(shape)} dimensions), but {needed_for} needs "
            f"{rank} dimensions: the file is damaged or from another model. Download or convert it again."
        )
    return shape


def read_sizes(read: Callable[[], T], file: str, what: str) -> T:
    """``read()`` (a ``*_config_from_shapes`` helper), with a missing or mis-shaped tensor named instead of a
    bare ``KeyError`` / ``ValueError``."""
    try:
        return read()
    except KeyError as exc:
        key = exc.args[0] if exc.args else "?"
        raise CheckpointError(
            f"{file} has no tensor {key!r}, which the size of {what} is read from: the file is incomplete (cut "
            "short, or saved from another model). Download or convert it again."
        ) from None
    except (ValueError, IndexError, TypeError) as exc:
        raise CheckpointError(
            f"{file}: cannot read the size of {what} from its tensors and config ({type(exc).__name__}: {exc}): the "
            "file is damaged or from another model, or its config.json has a wrong value. Download or convert it "
            "again, or correct the config."
        ) from None


def latent_channels_of(shapes: Mapping[str, tuple], file: str) -> int:
    return shape_of(shapes, "unet.conv_out.weight", 4, file, "the UNet's output channels")[0]


def check_unet_inputs(shapes: Mapping[str, tuple], stage: str, file: str) -> None:
    """Stage 2's UNet reads [noisy latents | mask | masked-image latents] (2 x latent channels + 1: 9), stage
    3's [noisy latents | coarse-image latents] (2 x latent channels: 8); the latent channels are conv_out's."""
    in_ch = shape_of(shapes, "unet.conv_in.weight", 4, file, "the UNet's input channels")[1]
    latent = latent_channels_of(shapes, file)
    want, parts = {
        "inpaint": (2 * latent + 1, f"{latent} noisy latents + 1 mask + {latent} masked-image latents"),
        "refine": (2 * latent, f"{latent} noisy latents + {latent} coarse-image latents"),
    }[stage]
    if in_ch == want:
        return
    stage_name = {"inpaint": "stage-2 inpainting", "refine": "stage-3 refining"}[stage]
    guess = {latent: "a plain text-to-image UNet", 2 * latent: "a stage-3 (refining) UNet",
             2 * latent + 1: "a stage-2 (inpainting) UNet"}.get(in_ch, "no PCDMs UNet")
    raise CheckpointError(
        f"{file} looks like a {stage_name} checkpoint by its parts, but its UNet takes {in_ch} input channels "
        f"(unet.conv_in.weight {list(shapes['unet.conv_in.weight'])}); a {stage_name} UNet takes {want} "
        f"({parts}). {in_ch} channels fit {guess}: the file is a mix of two models or from another project. Use the "
        "released PCDMs file for this stage."
    )


# --- configs --------------------------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class _Checker:
    def __init__(self, cfg: Mapping[str, Any], what: str, source: str):
        self.cfg, self.what, self.source = cfg, what, source

    def fail(self, problem: str) -> None:
        raise CheckpointError(f"the {self.what} config from {self.source} is not usable: {problem}. {CONFIG_FIX}")

    def int(self, key: str, minimum: int = 1, optional: bool = False) -> Optional[int]:
        v = self.cfg.get(key)
        if v is None and optional:
            return None
        if not _is_int(v):
            self.fail(f"{key} must be a whole number, got {v!r}")
        if v < minimum:
            self.fail(f"{key} must be at least {minimum}, got {v}")
        return int(v)

    def number(self, key: str, minimum: float, inclusive: bool = True, maximum: Optional[float] = None) -> None:
        v = self.cfg.get(key)
        if v is None:
            return
        ok = _is_number(v) and (v >= minimum if inclusive else v > minimum) and (maximum is None or v <= maximum)
        if not ok:
            bound = f"{'at least' if inclusive else 'more than'} {minimum}" + (f" and at most {maximum}" if maximum is not None else "")
            self.fail(f"{key} must be a number {bound}, got {v!r}")

    def ints(self, key: str, count: Optional[int], minimum: int = 1) -> Optional[list[int]]:
        """An int or a list of ``count`` ints (None when absent); returns the per-block list."""
        v = self.cfg.get(key)
        if v is None:
            return None
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        for item in items:
            if not _is_int(item):
                self.fail(f"{key} must hold whole numbers, got {v!r}")
            if item < minimum:
                self.fail(f"{key} must hold numbers of at least {minimum}, got {v!r}")
        if isinstance(v, (list, tuple)) and count is not None and len(items) != count:
            self.fail(f"{key} lists {len(items)} values but there are {count} blocks (down_block_types); give one per "
                      "block, or one number for all")
        return items * count if not isinstance(v, (list, tuple)) and count is not None else items

    def strings(self, key: str) -> list[str]:
        v = self.cfg.get(key)
        if not isinstance(v, (list, tuple)) or not v or not all(isinstance(s, str) for s in v):
            self.fail(f"{key} must be a non-empty list of block names, got {v!r}")
        return list(v)


def check_unet_config(cfg: Mapping[str, Any], source: str) -> None:
    """The UNet settings diffusers would otherwise fail on deep inside (or build a model that cannot run)."""
    c = _Checker(cfg, "UNet", source)
    down, up = c.strings("down_block_types"), c.strings("up_block_types")
    widths = c.ints("block_out_channels", None)
    if widths is None or not isinstance(cfg.get("block_out_channels"), (list, tuple)):
        c.fail(f"block_out_channels must be a list of channel widths, got {cfg.get('block_out_channels')!r}")
    if not (len(down) == len(up) == len(widths)):
        c.fail(f"down_block_types ({len(down)}), up_block_types ({len(up)}) and block_out_channels ({len(widths)}) "
               "must have the same length: one entry per UNet level")
    for key in ("in_channels", "out_channels"):
        c.int(key)
    c.ints("layers_per_block", len(down))
    c.ints("cross_attention_dim", len(down))
    c.number("norm_eps", 0.0, inclusive=False)
    groups = c.int("norm_num_groups", optional=True)
    if groups is not None:
        bad = [w for w in widths if w % groups]
        if bad:
            c.fail(f"norm_num_groups {groups} does not divide the channel widths {bad} of block_out_channels "
                   f"{widths}: group normalisation splits each width into that many equal groups (the official "
                   "32 needs widths that are multiples of 32)")
    heads = c.ints("num_attention_heads", len(down)) or c.ints("attention_head_dim", len(down))
    if heads is not None:
        for level, (width, h) in enumerate(zip(widths, heads)):
            if width % h:
                key = "num_attention_heads" if cfg.get("num_attention_heads") is not None else "attention_head_dim"
                c.fail(f"{key} {h} does not divide the width {width} of level {level} (block_out_channels "
                       f"{widths}): each attention head takes an equal share of the channels (for SD 2.1-style "
                       f"configs {key} is the number of heads)")


def check_prior_config(cfg: Mapping[str, Any], source: str) -> None:
    c = _Checker(cfg, "prior", source)
    for key in ("num_attention_heads", "attention_head_dim", "num_layers", "embedding_dim", "pose_dim",
                "pose_hidden_dim"):
        c.int(key)
    for key in ("num_embeddings", "additional_embeddings"):
        c.int(key, minimum=0)
    c.number("dropout", 0.0, maximum=1.0)
    c.number("embed_std", 0.0, inclusive=False)
    if cfg.get("embed_mean") is not None and not _is_number(cfg.get("embed_mean")):
        c.fail(f"embed_mean must be a number, got {cfg.get('embed_mean')!r}")


def built(build: Callable[[], T], what: str, source: str) -> T:
    """``build()``, with a constructor's own refusal (an unknown block type, say) as one ``CheckpointError``."""
    try:
        return build()
    except CheckpointError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError, AssertionError,
            RuntimeError) as exc:
        raise CheckpointError(
            f"the {what} config from {source} cannot build the network: {type(exc).__name__}: {exc}. {CONFIG_FIX}"
        ) from None


def check_parts(shapes: Mapping[str, tuple], unet_config: Mapping[str, Any], projector_prefix: str, file: str,
                pose_prefix: Optional[str] = None) -> None:
    """After a strict load (so the UNet's tensors fit ``unet_config``): the parts of one file that must fit each
    other. The projector feeds the UNet's cross-attention; the pose encoder adds to its first feature map."""
    out_dim = shape_of(shapes, projector_prefix + "net.4.weight", 2, file, "the image projector's width")[0]
    cross = unet_config.get("cross_attention_dim")
    if _is_int(cross) and out_dim != cross:
        raise CheckpointError(
            f"{file} mixes parts of two models: its image projector ({projector_prefix}net.4.weight) gives tokens of "
            f"width {out_dim}, but its UNet's cross-attention takes {cross}. Use the released file for this stage."
        )
    if pose_prefix is not None:
        pose_out = shape_of(shapes, pose_prefix + "conv_out.weight", 4, file, "the pose encoder's width")[0]
        first = list(unet_config.get("block_out_channels") or [None])[0]
        if _is_int(first) and pose_out != first:
            raise CheckpointError(
                f"{file} mixes parts of two models: its pose encoder ({pose_prefix}conv_out.weight) gives {pose_out} "
                f"channels, but its UNet's first level, which they are added to, has {first}. Use the released file "
                "for this stage."
            )
