"""Fixtures for the tests against a real ComfyUI (see tests/comfy_server.py). Without a ComfyUI every test
here is skipped, with the reason in the summary; under ``CI=true`` the run stops with that reason instead,
so CI cannot pass without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_server import Server, ensure_requirements, find_comfyui, in_ci, make_env

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    ours = [item for item in items if HERE in Path(str(item.fspath)).parents]
    base, _, why = find_comfyui()
    if base is not None or not ours:
        return
    if in_ci():
        raise pytest.UsageError(f"CI=true but the real-ComfyUI tests cannot run: {why} (see README, Tests)")
    skip = pytest.mark.skip(reason=f"real-ComfyUI tests skipped: {why} (see README, Tests)")
    for item in ours:
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
