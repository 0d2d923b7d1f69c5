"""Fixtures for the tests against a real ComfyUI (see tests/comfy_server.py). Without ``COMFYUI_PATH``
every test here is skipped, with that reason in the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_server import Server, comfyui_path, make_env

HERE = Path(__file__).parent
SKIP_REASON = "COMFYUI_PATH is not set: the tests against a real ComfyUI are skipped (see README, Tests)"


def pytest_collection_modifyitems(config, items):
    if comfyui_path() is not None:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy_env(tmp_path_factory):
    return make_env(tmp_path_factory.mktemp("comfy"))


@pytest.fixture(scope="session")
def server(comfy_env):
    srv = Server(comfy_env)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def object_info(server):
    return server.get("/object_info")
