"""Reading weight files safely.

* ``.safetensors``: opened lazily; tensors are read one at a time.
* ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``: ``torch.load(weights_only=True)``, memory-mapped where the file
  format allows it. A pickle that needs more than weights (code objects, custom classes) is refused with
  advice; it is never loaded with ``weights_only=False``.

DeepSpeed checkpoints keep the model under ``"module"``; Lightning-style files under ``"state_dict"``;
both are unwrapped.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional

import torch
from torch import nn
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

UNSAFE_ADVICE = (
    "It is refused because loading it would run code from the file. If you trust where it came from, convert "
    "it once to safetensors in a Python session of your own, e.g.\n"
    "    import torch; from safetensors.torch import save_file\n"
    "    sd = torch.load(PATH, map_location='cpu', weights_only=False)  # runs the file's code\n"
    "    sd = sd.get('module', sd)\n"
    "    save_file({k: v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}, 'converted.safetensors')\n"
    "then load converted.safetensors instead."
)


class WeightFile(Mapping[str, torch.Tensor]):
    """A read-only mapping of tensor names to tensors, plus shapes, dtypes and metadata without loading.

    For safetensors the tensors are read on access; for pickled files they come from a memory-mapped
    ``torch.load``.
    """

    def __init__(self, path: Path, keys: list[str], getter, shapes: dict, dtypes: dict, metadata: dict, fmt: str,
                 releaser=None):
        self.path = path
        self._keys = keys
        self._get = getter
        self._release = releaser
        self.shapes = shapes
        self.dtypes = dtypes
        self.metadata = metadata
        self.format = fmt

    @classmethod
    def from_tensors(cls, path: Path, tensors: Mapping[str, torch.Tensor], metadata: Optional[dict] = None,
                     fmt: str = "converted") -> "WeightFile":
        """A ``WeightFile`` over tensors already in memory (for example after renaming keys)."""
        tensors = dict(tensors)
        return cls(path, list(tensors), tensors.__getitem__, {k: tuple(v.shape) for k, v in tensors.items()},
                   {k: v.dtype for k, v in tensors.items()}, dict(metadata or {}), fmt)

    def release(self, key: str) -> None:
        """Say that the tensor read for ``key`` was copied (cast to another dtype) and its stored bytes are no
        longer needed: for a memory-mapped file their pages leave the process's memory now, so a model cast
        while loading is never held twice."""
        if self._release is not None:
            self._release(key)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        return self._get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def num_parameters(self) -> int:
        n = 0
        for s in self.shapes.values():
            p = 1
            for d in s:
                p *= int(d)
            n += p
        return n

    def dtype_summary(self) -> str:
        counts: dict[str, int] = {}
        for d in self.dtypes.values():
            name = str(d).replace("torch.", "")
            counts[name] = counts.get(name, 0) + 1
        return ", ".join(f"{k} ({v})" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _open_safetensors(path: Path) -> WeightFile:
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"cannot read {path.name}: it is not a valid safetensors file ({exc}). The file may be truncated "
            "or still downloading; download or convert it again."
        ) from None
    keys = list(handle.keys())
    shapes, dtypes = {}, {}
    for k in keys:
        sl = handle.get_slice(k)
        shapes[k] = tuple(sl.get_shape())
        dtypes[k] = _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype())
    metadata = dict(handle.metadata() or {})
    mapped, release = _map_safetensors(path)

    def get(key: str) -> torch.Tensor:
        if mapped is not None:
            try:
                return mapped(key)
            except (RuntimeError, ValueError, KeyError):
                pass  # an unusual layout: fall back to the library's reader
        try:
            return handle.get_tensor(key)
        except SafetensorError as exc:
            raise CheckpointError(f"cannot read tensor {key!r} of {path.name}: {exc}; the file may be damaged") from None

    return WeightFile(path, keys, get, shapes, dtypes, metadata, "safetensors", release)


def _map_safetensors(path: Path):
    """Tensors that are copy-on-write views of a memory map of the file: nothing is read until used, and a
    tensor kept in its stored dtype is never copied (the safetensors library copies each tensor it reads)."""
    try:
        fh = open(path, "rb")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        fh.close()
        n = int.from_bytes(mm[:8], "little")
        header = json.loads(mm[8:8 + n])
    except (OSError, ValueError):
        return None, None
    base = 8 + n

    def get(key: str) -> torch.Tensor:
        info = header[key]
        dtype = _ST_DTYPES[info["dtype"]]
        shape = tuple(info["shape"])
        start, end = info["data_offsets"]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start).view(shape)

    def release(key: str) -> None:
        # The mapping is private and never written, so dropped pages are simply read from the file again if a
        # neighbouring tensor on a shared page is used later.
        start, end = header[key]["data_offsets"]
        first = (base + start) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mm.madvise(mmap.MADV_DONTNEED, first, base + end - first)
            except (OSError, ValueError):
                pass

    return get, release


def _unwrap(obj, path: Path) -> dict:
    if isinstance(obj, Mapping):
        for key in ("module", "state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in list(inner.values())[:8]):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
        if tensors:
            return tensors
    raise CheckpointError(
        f"{path.name} holds no model weights that pcdms_core recognises (expected a state dict, or a DeepSpeed "
        "checkpoint with a 'module' entry)."
    )


def _what_else(head: bytes) -> Optional[str]:
    """What a file that should be a PyTorch checkpoint is instead, from its first bytes (None: it may be one)."""
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch's zip format, or a legacy pickle
        return None
    text = head.lstrip().lower()
    known = [
        (head[:8] == b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (head[:3] == b"\xff\xd8\xff", "a JPEG image"),
        (head[:4] == b"RIFF" and head[8:12] == b"WEBP", "a WebP image"),
        (text.startswith((b"<!doctype html", b"<html", b"<head", b"<!--")),
         "a web page (what a failed or blocked download saves under the file's name)"),
        (text.startswith((b"{", b"[")), "a JSON file"),
        (head[:4] == b"GGUF", "a GGUF file"),
    ]
    for hit, what in known:
        if hit:
            return what
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    return "not a PyTorch checkpoint"


def _code_the_pickle_needs(path: Path, message: str) -> str:
    """The classes or functions a pickle refers to beyond plain weights, read without running it (pickletools
    only lists its opcodes); "" when the file is no readable pickle (damaged, or something else)."""
    hit = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if hit:
        return hit.group(1)
    names, strings = [], []
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle, or one cut short: nothing here asks for code
        return ""
    code = [n for n in dict.fromkeys(names) if not n.startswith(("torch.", "collections.OrderedDict"))]
    return ", ".join(code[:3])


def _open_pickle(path: Path) -> WeightFile:
    with open(path, "rb") as fh:
        head = fh.read(64)
    other = _what_else(head)
    if other == "safetensors":  # a safetensors file under a .pt name: read it as what it is
        return _open_safetensors(path)
    if other is not None:
        raise CheckpointError(
            f"{path.name} is {other}, not a model checkpoint: the file is not what its name says. Download the "
            "checkpoint again (from the link in the README's model table) and check its size."
        )

    def load(mmap: bool):
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            obj = load(mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                raise
            obj = load(mmap=False)  # legacy (non-zip) format cannot be memory-mapped
    except pickle.UnpicklingError as exc:
        needs = _code_the_pickle_needs(path, str(exc))
        if not needs:  # not a readable pickle at all: damaged, and no reason to think of unsafe loading
            raise CheckpointError(
                f"cannot read {path.name}: the file is damaged or not a PyTorch checkpoint. Download it again."
            ) from None
        raise CheckpointError(
            f"{path.name} is a pickle that needs more than plain weights to load (it refers to {needs}).\n"
            f"{UNSAFE_ADVICE}"
        ) from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(
            f"cannot read {path.name}: the file is truncated or corrupt ({exc}). Download it again."
        ) from None
    except RuntimeError as exc:
        raise CheckpointError(
            f"cannot read {path.name} with torch.load ({str(exc).splitlines()[0]}). The file is damaged or not a "
            "PyTorch checkpoint."
        ) from None
    sd = _unwrap(obj, path)
    return WeightFile.from_tensors(path, sd, fmt="pickle")


def open_weights(path: os.PathLike | str) -> WeightFile:
    """Open a weight file (see the module docstring). Raises ``CheckpointError`` with a readable message."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"model file not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder; give the weight file inside it (or use the folder loader)")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p.name} is empty (0 bytes): the download or copy did not finish")
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _open_safetensors(p)
    if suffix in PICKLE_SUFFIXES:
        return _open_pickle(p)
    # Unknown suffix: what the content is (the same sniffing as for a .pt that is something else).
    with open(p, "rb") as fh:
        kind = _what_else(fh.read(64))
    if kind is None or kind == "safetensors":
        return _open_pickle(p)  # a PyTorch checkpoint, or a safetensors file, read as what it is
    raise CheckpointError(f"{p.name} is {kind}; expected a .safetensors file or a PyTorch .pt/.pth/.bin checkpoint")


def folder_weight_file(folder: Path, stems: tuple[str, ...]) -> Optional[Path]:
    """The weight file of a diffusers / transformers folder (safetensors preferred)."""
    for stem in stems:
        for suffix in (".safetensors", ".bin"):
            candidate = folder / f"{stem}{suffix}"
            if candidate.exists():
                return candidate
    return None


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Create modules whose parameters live on the ``meta`` device: no memory, no random initialisation.

    Buffers stay real, so non-persistent ones are correct. ``strict_load`` fills the parameters afterwards.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = original


@dataclass
class Mismatch:
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[tuple[str, tuple, tuple]]  # (key, file shape, model shape)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def lines(self) -> list[str]:
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} tensors missing from the file, e.g. {', '.join(self.missing[:3])}")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} tensors the model does not have, e.g. {', '.join(self.unexpected[:3])}")
        if self.wrong_shape:
            examples = "; ".join(f"{k}: file {list(fs)} vs model {list(ms)}" for k, fs, ms in self.wrong_shape[:3])
            out.append(f"{len(self.wrong_shape)} tensors with other shapes, e.g. {examples}")
        return out


def compare(module: nn.Module, weights: WeightFile, names: Optional[Iterable[str]] = None) -> Mismatch:
    """How the tensors ``names`` of ``weights`` (all by default) differ from ``module``'s state dict."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    names = list(weights) if names is None else list(names)
    given = set(names)
    return Mismatch(
        missing=[k for k in expected if k not in given],
        unexpected=[k for k in names if k not in expected],
        wrong_shape=[(k, tuple(weights.shapes[k]), expected[k]) for k in expected
                     if k in given and tuple(weights.shapes[k]) != expected[k]],
    )


def _non_finite_message(file: str, bad: list[tuple[str, torch.Tensor]]) -> str:
    examples = []
    for key, t in bad[:3]:
        nan = int(torch.isnan(t).sum())
        inf = int(torch.isinf(t).sum())
        examples.append(f"{key} ({nan} NaN, {inf} infinite of {t.numel()})")
    return (
        f"{file} holds NaN or infinite weights in {len(bad)} tensors, e.g. {'; '.join(examples)}. A model with them "
        "only makes NaN images: the file is damaged, or was saved from a training run that diverged. Download it "
        "again, or use an earlier checkpoint of that training."
    )


def strict_load(
    module: nn.Module,
    weights: WeightFile,
    names: Optional[Iterable[str]] = None,
    *,
    dtype: Optional[torch.dtype] = None,
    describe: str = "",
    fix: str = "",
) -> None:
    """Load ``weights`` into a meta-initialised ``module``, strictly.

    On any difference raise ``CheckpointError``: what the file looks like (``describe``), the counts and a few
    examples of missing, unexpected and mis-shaped tensors, and the probable ``fix``. Floating-point tensors
    are cast to ``dtype`` one at a time, so the model is never held twice. A file with NaN or infinite weights is
    refused (such a model only makes NaN images), and so is one whose values overflow ``dtype`` when cast.
    """
    mismatch = compare(module, weights, names)
    if mismatch:
        head = f"{weights.path.name} does not load into the model built for it"
        lines = [head + (f" ({describe})" if describe else "") + ":"]
        lines += ["  " + line for line in mismatch.lines()]
        if fix:
            lines.append("  " + fix)
        raise CheckpointError("\n".join(lines))
    sd, bad, overflow = {}, [], []
    for key in module.state_dict().keys():
        t = weights[key]
        finite = not t.is_floating_point() or bool(torch.isfinite(t).all())
        if not finite:
            bad.append((key, t))
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
            weights.release(key)
            if finite and not bool(torch.isfinite(t).all()):
                overflow.append(key)
        sd[key] = t
    if bad:
        raise CheckpointError(_non_finite_message(weights.path.name, bad))
    if overflow:
        name = str(dtype).replace("torch.", "")
        raise CheckpointError(
            f"{weights.path.name} holds values too large for {name} ({len(overflow)} tensors overflow to infinity "
            f"when cast, e.g. {', '.join(overflow[:3])}): load it in {'bf16 or fp32' if name == 'float16' else 'fp32'} "
            "instead (the loaders' dtype; --dtype on the command line)."
        )
    module.load_state_dict(sd, strict=True, assign=True)
    module.eval().requires_grad_(False)
