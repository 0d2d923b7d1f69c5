"""ComfyUI in this process, for the check scripts beside this file (run with ComfyUI's Python, from its checkout):
ComfyUI's modules set up for the CPU, the test environment's model folders, and the pack imported as ComfyUI
imports a custom node package."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def boot(env_dir: Path, pack_dir: Path, **cli_args):
    """Set ComfyUI's command-line options (``cpu`` and ``cli_args``), read ``env_dir``'s extra_model_paths.yaml and
    input folder, and return the pack's module (``ComfyUI_PCDMs``)."""
    sys.path.insert(0, os.getcwd())
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    for name, value in cli_args.items():
        setattr(comfy.cli_args.args, name, value)
    import folder_paths
    from utils.extra_config import load_extra_path_config

    load_extra_path_config(str(Path(env_dir) / "extra_model_paths.yaml"))
    folder_paths.set_input_directory(str(Path(env_dir) / "input"))
    spec = importlib.util.spec_from_file_location("ComfyUI_PCDMs", Path(pack_dir) / "__init__.py",
                                                  submodule_search_locations=[str(pack_dir)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["ComfyUI_PCDMs"] = pack
    spec.loader.exec_module(pack)
    return pack
