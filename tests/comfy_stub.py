"""Stand-ins for the ComfyUI modules the nodes import, for tests on machines without ComfyUI.

Only the import boundary is stood in: the V3 schema classes record what the nodes declare, model management
records what is loaded, the progress bar records updates and can raise the interrupt. The node code under
test is the real one. ``install(tmp_path)`` puts the modules in ``sys.modules`` and returns them;
``import_pack()`` imports the repository as a package the way ComfyUI does.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "pcdms_pack_under_test"


# --- comfy_api.latest.io --------------------------------------------------------------------------------------------

class _Input:
    def __init__(self, io_type: str, id: str, display_name=None, optional=False, tooltip=None, **kw):
        self.io_type, self.id, self.display_name, self.optional, self.tooltip = io_type, id, display_name, optional, tooltip
        self.options = kw.pop("options", None)
        self.default = kw.pop("default", None)
        self.extra = kw

    @property
    def is_widget(self) -> bool:
        return self.io_type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


class _Output:
    def __init__(self, io_type: str, id=None, display_name=None, tooltip=None, **kw):
        self.io_type, self.id, self.display_name, self.tooltip = io_type, id, display_name, tooltip


def _comfytype(io_type: str):
    class T:
        pass

    T.io_type = io_type
    T.Input = lambda id, *a, **kw: _Input(io_type, id, *a, **kw)
    T.Output = lambda *a, **kw: _Output(io_type, *a, **kw)
    return T


def _multi_input(id, types, display_name=None, optional=False, tooltip=None, **kw):
    return _Input(",".join(t.io_type for t in types), id, display_name, optional, tooltip, **kw)


class Schema:
    def __init__(self, node_id, display_name=None, category="", inputs=None, outputs=None, description="", **kw):
        self.node_id, self.display_name, self.category, self.description = node_id, display_name, category, description
        self.inputs, self.outputs = inputs or [], outputs or []
        self.extra = kw


class NodeOutput:
    def __init__(self, *args, ui=None, **kw):
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args


class ComfyNode:
    @classmethod
    def define_schema(cls):  # pragma: no cover - overridden
        raise NotImplementedError


def object_info(cls) -> dict:
    """A node's entry as ComfyUI's ``/object_info`` shows it, from the schema recorded by these stand-ins."""
    schema = cls.define_schema()
    sections: dict[str, dict] = {"required": {}, "optional": {}}
    order: dict[str, list] = {"required": [], "optional": []}
    for inp in schema.inputs:
        opts = {k: v for k, v in {"tooltip": inp.tooltip, "default": inp.default, **inp.extra}.items() if v is not None}
        if inp.io_type == "COMBO":
            opts["options"] = list(inp.options or [])
        part = "optional" if inp.optional else "required"
        sections[part][inp.id] = [inp.io_type, opts]
        order[part].append(inp.id)
    return {
        "input": {k: v for k, v in sections.items() if v},
        "input_order": {k: v for k, v in order.items() if v},
        "output": [o.io_type for o in schema.outputs],
        "output_name": [o.display_name for o in schema.outputs],
        "name": schema.node_id,
        "display_name": schema.display_name,
        "category": schema.category,
        "description": schema.description,
        "output_node": False,
    }


def _make_io() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    for name, io_type in [("Int", "INT"), ("Float", "FLOAT"), ("String", "STRING"), ("Boolean", "BOOLEAN"),
                          ("Combo", "COMBO"), ("Image", "IMAGE"), ("Mask", "MASK"), ("Vae", "VAE"), ("Latent", "LATENT"),
                          ("Model", "MODEL"), ("Conditioning", "CONDITIONING"), ("ClipVision", "CLIP_VISION")]:
        setattr(io, name, _comfytype(io_type))
    io.Custom = _comfytype
    io.MultiType = types.SimpleNamespace(Input=_multi_input)
    io.Schema, io.NodeOutput, io.ComfyNode = Schema, NodeOutput, ComfyNode
    return io


# --- comfy.model_management and friends ----------------------------------------------------------------------------

class InterruptProcessingException(Exception):
    pass


class _ModelManagement(types.ModuleType):
    def __init__(self):
        super().__init__("comfy.model_management")
        self.loaded: list[Any] = []
        self.load_calls: list[list[Any]] = []
        self.interrupt = False
        self.InterruptProcessingException = InterruptProcessingException

    def get_torch_device(self):
        return torch.device("cpu")

    unet_offload_device = intermediate_device = get_torch_device
    text_encoder_device = text_encoder_offload_device = vae_device = vae_offload_device = get_torch_device

    def text_encoder_dtype(self, device=None):
        return torch.float32

    def unet_dtype(self, device=None, supported_dtypes=(), **kw):
        return torch.float32

    def vae_dtype(self, *a, **kw):
        return torch.float32

    def dtype_size(self, dtype):
        return torch.tensor([], dtype=dtype).element_size()

    def load_models_gpu(self, models, memory_required=0, force_full_load=False, **kw):
        self.load_calls.append(list(models))
        for m in models:
            if m not in self.loaded:
                self.loaded.append(m)
            m.model.to(m.load_device)

    def throw_exception_if_processing_interrupted(self):
        if self.interrupt:
            self.interrupt = False
            raise InterruptProcessingException()


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        model.device = offload_device


class ProgressBar:
    updates: list[tuple] = []

    def __init__(self, total, node_id=None):
        self.total = total

    def update_absolute(self, value, total=None, preview=None):
        ProgressBar.updates.append((value, total, preview))


def install(tmp_path: Path) -> dict[str, types.ModuleType]:
    """Put the stand-ins in ``sys.modules``; ``tmp_path`` holds the models and input folders."""
    models_dir = tmp_path / "models"
    input_dir = tmp_path / "input"
    for d in ("pcdms", "clip_vision", "vae"):
        (models_dir / d).mkdir(parents=True, exist_ok=True)
    input_dir.mkdir(exist_ok=True)

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    fp.folder_names_and_paths = {
        "clip_vision": ([str(models_dir / "clip_vision")], set(fp.supported_pt_extensions)),
        "vae": ([str(models_dir / "vae")], set(fp.supported_pt_extensions)),
    }

    def get_filename_list(name):
        paths, exts = fp.folder_names_and_paths[name]
        out = []
        for base in paths:
            for root, _, files in os.walk(base):
                for f in files:
                    if not exts or os.path.splitext(f)[1] in exts:
                        out.append(os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/"))
        return sorted(out)

    def get_full_path(name, filename):
        for base in fp.folder_names_and_paths[name][0]:
            p = os.path.join(base, filename)
            if os.path.isfile(p):
                return p
        return None

    fp.get_filename_list, fp.get_full_path = get_filename_list, get_full_path
    fp.get_input_directory = lambda: str(input_dir)
    fp.get_annotated_filepath = lambda name: str(input_dir / name)
    fp.exists_annotated_filepath = lambda name: (input_dir / name).exists()

    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    mm = _ModelManagement()
    patcher_mod = types.ModuleType("comfy.model_patcher")
    patcher_mod.ModelPatcher = ModelPatcher
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    ProgressBar.updates = []
    formats = types.ModuleType("comfy.latent_formats")
    formats.SD15 = lambda: types.SimpleNamespace(latent_rgb_factors=None)
    preview = types.ModuleType("latent_preview")
    preview.get_previewer = lambda device, fmt: None
    comfy.model_management, comfy.model_patcher, comfy.utils, comfy.latent_formats = mm, patcher_mod, utils, formats

    api = types.ModuleType("comfy_api")
    api.__path__ = []
    latest = types.ModuleType("comfy_api.latest")
    latest.io = _make_io()

    class ComfyExtension:
        pass

    latest.ComfyExtension = ComfyExtension
    api.latest = latest

    modules = {
        "folder_paths": fp, "comfy": comfy, "comfy.model_management": mm, "comfy.model_patcher": patcher_mod,
        "comfy.utils": utils, "comfy.latent_formats": formats, "latent_preview": preview,
        "comfy_api": api, "comfy_api.latest": latest,
    }
    sys.modules.update(modules)
    return modules


def import_pack():
    """Import the repository root as ComfyUI does: a package from its ``__init__.py``."""
    for name in [m for m in sys.modules if m == PACK_NAME or m.startswith(PACK_NAME + ".")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def uninstall(modules: dict) -> None:
    for name in list(modules):
        sys.modules.pop(name, None)
    for name in [m for m in sys.modules if m == PACK_NAME or m.startswith(PACK_NAME + ".")]:
        del sys.modules[name]
