"""ComfyUI nodes of the PCDMs pack (V3 API): thin adapters over ``pcdms_core``."""

from comfy_api.latest import ComfyExtension, io

from . import loaders, native, pose_nodes, stages
from .bridge import install_example_inputs, register_model_folder

register_model_folder()
install_example_inputs()

NODES: list[type[io.ComfyNode]] = [*loaders.NODES, *pose_nodes.NODES, *stages.NODES, *native.NODES]


class PCDMsExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PCDMsExtension:
    return PCDMsExtension()
