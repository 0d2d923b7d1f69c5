"""Fixtures for the tests against a real ComfyUI (see tests/comfy_server.py). Without ``COMFYUI_PATH``
every test here is skipped, with that reason in the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_server import Server, ensure_requirements, find_comfyui, make_env

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    base, _, why = find_comfyui()
    if base is not None:
        return
    skip = pytest.mark.skip(reason=f"real-ComfyUI tests skipped: {why} (see README, Tests)")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy_env(tmp_path_factory):
    ensure_requirements()
    return make_env(tmp_path_factory.mktemp("comfy"))


@pytest.fixture(scope="session")
def server(comfy_env):
    srv = Server(comfy_env)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def object_info(server):
    return server.get("/object_info")
