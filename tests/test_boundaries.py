"""The library's boundaries: pcdms_core runs without ComfyUI, its imports form no cycle, the nodes reach none of
the training code or the opt-in CPU speed-ups, and nothing on the nodes' path changes process-wide state."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "pcdms_core"
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "server", "nodes", "execution", "latent_preview"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> list[str]:
    return sorted(_module_name(p) for p in CORE.rglob("*.py") if p.stem != "__main__")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name a relative ``from ... import`` refers to."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _core_name(name: str) -> str:
    """``..pcdms_core.x`` as the nodes write it, or ``pcdms_core.x``, as ``pcdms_core.x``."""
    return "pcdms_core" + name.split("pcdms_core", 1)[1] if "pcdms_core" in name else name


def import_graph(files: list[Path], root_name=_module_name) -> dict[str, set[str]]:
    """Module -> the pcdms_core modules it imports (module level and inside functions alike)."""
    known = set(core_modules())
    graph: dict[str, set[str]] = {}
    for path in files:
        name = root_name(path)
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.ImportFrom) and (node.level or node.module):
                base = _resolve(name, path.name == "__init__.py", node) if node.level else node.module
                base = _core_name(base)
                # ``from package import module`` imports the module; ``from module import name`` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [_core_name(a.name) for a in node.names]
            edges.update(t for t in targets if t in known and t != name)
    return graph


def _core_graph() -> dict[str, set[str]]:
    return import_graph([p for p in CORE.rglob("*.py") if p.stem != "__main__"])


def _reachable(graph: dict[str, set[str]], starts) -> set[str]:
    seen, todo = set(), list(starts)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += graph.get(m, ())
        # importing a module imports the packages above it
        parts = m.split(".")
        todo += [".".join(parts[:k]) for k in range(1, len(parts))]
    return seen


def test_no_comfy_import_statements():
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in COMFY_MODULES]
    assert offenders == []


def test_the_core_has_no_import_cycle():
    edges = _core_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t] if t in stack else [m, t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_diffusers_glue_is_a_leaf():
    assert _core_graph()["pcdms_core.diffusers_glue"] == set()


def test_every_module_imports_first_in_a_fresh_interpreter_with_comfy_blocked():
    """Each module imported as the first of the package (a cycle fails this way), with ComfyUI unimportable."""
    blocked = sorted(COMFY_MODULES)
    modules = core_modules()
    code = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
failed = []
for m in {modules!r}:
    for k in [k for k in sys.modules if k == 'pcdms_core' or k.startswith('pcdms_core.')]:
        del sys.modules[k]
    try:
        importlib.import_module(m)
    except Exception as exc:
        failed.append(f'{{m}}: {{exc!r}}')
print('failed:', failed)
print('ok', len({modules!r}))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "failed: []" in proc.stdout, proc.stdout
    assert f"ok {len(modules)}" in proc.stdout


# What may change the whole process (every thread of ComfyUI's): allocator settings, re-executing the process,
# the environment, thread counts.
PROCESS_WIDE = ("mallopt", "malloc_trim", "GLIBC_TUNABLES", "MAP_ANONYMOUS", "ctypes", "os.exec", "execv",
                "os.environ[", "putenv", "environ.update", "set_num_threads", "set_num_interop_threads",
                "showwarning", "catch_warnings", "simplefilter", "filterwarnings")


def _nodes_graph() -> dict[str, set[str]]:
    files = sorted((ROOT / "nodes").glob("*.py")) + [ROOT / "__init__.py"]
    return import_graph(files, root_name=lambda p: "nodes." + p.stem if p.parent.name == "nodes" else "pack")


def test_the_nodes_reach_neither_training_nor_the_cpu_speed_ups():
    core = _core_graph()
    from_nodes = set().union(*_nodes_graph().values())
    assert from_nodes, "the nodes import pcdms_core: the graph must see it"
    reached = _reachable(core, from_nodes)
    assert "pcdms_core.stages.inpaint" in reached and "pcdms_core.loading.checkpoints" in reached
    assert sorted(m for m in reached if m.startswith(("pcdms_core.train", "pcdms_core.cpu"))) == []


def test_nothing_on_the_nodes_path_changes_process_wide_state():
    reached = _reachable(_core_graph(), set().union(*_nodes_graph().values()))
    offenders = []
    paths = [ROOT / "__init__.py", *sorted((ROOT / "nodes").glob("*.py"))]
    paths += [CORE / (m.split(".", 1)[1].replace(".", "/") + ".py") if "." in m else CORE / "__init__.py" for m in reached]
    for path in paths:
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {word}" for word in PROCESS_WIDE if word in text]
    assert offenders == []


def test_the_library_never_restarts_the_process():
    for path in CORE.rglob("*.py"):
        text = path.read_text()
        assert "execv" not in text and "GLIBC_TUNABLES" not in text and "mallopt" not in text, path
