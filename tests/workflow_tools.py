"""Workflow helpers for the tests and for scripts/build_workflows.py: ComfyUI's UI (graph) format, its
conversion to the API (prompt) format, and a schema check of links and widgets.

The conversion does what ComfyUI's frontend does in ``graphToPrompt`` for the nodes our workflows use:
widget values are positional over the node's widget inputs in ``input_order`` (required, then optional),
an INT with ``control_after_generate`` takes one extra value, virtual nodes (Note, MarkdownNote, Reroute) are
dropped, and each linked input becomes ``[origin_id, origin_slot]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
CORE_SCHEMAS = Path(__file__).parent / "fixtures" / "core_node_schemas.json"
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def input_spec(info: dict, name: str) -> list:
    for part in ("required", "optional"):
        if name in info["input"].get(part, {}):
            return info["input"][part][name]
    raise KeyError(name)


def ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in ComfyUI's widget order."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items() if k != "hidden"}
    out = []
    for part in ("required", "optional"):
        for name in order.get(part, []):
            out.append((name, info["input"][part][name], part == "optional"))
    return out


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_inputs(info: dict) -> list[tuple[str, list]]:
    return [(name, spec) for name, spec, _ in ordered_inputs(info) if is_widget(spec)]


def takes_control_value(spec: list) -> bool:
    opts = spec[1] if len(spec) > 1 else {}
    return spec[0] == "INT" and bool(opts.get("control_after_generate"))


def widget_values(info: dict, values: list) -> dict[str, Any]:
    """Positional ``widgets_values`` to {input name: value}."""
    out: dict[str, Any] = {}
    i = 0
    for name, spec in widget_inputs(info):
        if i >= len(values):
            break
        out[name] = values[i]
        i += 2 if takes_control_value(spec) else 1
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        inputs: dict[str, Any] = widget_values(info, node.get("widgets_values") or [])
        links = {link[0]: link for link in workflow["links"]}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link = links[socket["link"]]
                inputs[socket["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", info.get("display_name", node["type"]))}}
    return prompt


def accepts(input_type: str, output_type: str) -> bool:
    if input_type == "*" or output_type == "*":
        return True
    return output_type in input_type.split(",") or input_type in output_type.split(",")


FILE_WIDGETS = {"ckpt_name", "encoder_name", "vae_name", "pose_file", "image"}  # their options are the user's files


def check_workflow(workflow: dict, object_info: dict, *, check_combos: bool = True) -> list[str]:
    """Problems with a UI-format workflow against node schemas (an empty list when it is sound). Combo values
    are checked against their options, except the file lists (``FILE_WIDGETS``), which depend on the machine."""
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        info = object_info.get(node["type"])
        if info is None:
            problems.append(f"node {node['id']}: unknown type {node['type']}")
            continue
        linked = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        values = widget_values(info, node.get("widgets_values") or [])
        for name, spec, optional in ordered_inputs(info):
            if is_widget(spec):
                if name not in values and name not in linked:
                    problems.append(f"node {node['id']} ({node['type']}): no value for widget {name}")
                elif check_combos and name in values and name not in FILE_WIDGETS:
                    options = spec[0] if isinstance(spec[0], list) else (spec[1].get("options") if spec[0] == "COMBO" else None)
                    if options is not None and values[name] not in options:
                        problems.append(f"node {node['id']} ({node['type']}): {name}={values[name]!r} not in {options[:6]}")
            elif not optional and name not in linked:
                problems.append(f"node {node['id']} ({node['type']}): required input {name} is not connected")
    for link_id, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        src, dst = nodes.get(origin), nodes.get(target)
        if src is None or dst is None:
            problems.append(f"link {link_id}: a node is missing")
            continue
        out_type = object_info[src["type"]]["output"][origin_slot]
        socket = dst["inputs"][target_slot]
        if socket.get("link") != link_id:
            problems.append(f"link {link_id}: {dst['type']}.{socket['name']} does not point back at it")
        in_type = input_spec(object_info[dst["type"]], socket["name"])[0]
        in_type = "COMBO" if isinstance(in_type, list) else in_type
        if not (accepts(in_type, out_type) and accepts(in_type, link_type)):
            problems.append(
                f"link {link_id}: {src['type']} output {out_type} into {dst['type']}.{socket['name']} ({in_type})"
            )
    return problems


def workflow_files() -> dict[str, Path]:
    """Each shipped template's file by its id (``extra.pcdms_template``; the file name is the template's title)."""
    out = {}
    for p in sorted(WORKFLOWS.glob("*.json")):
        out[json.loads(p.read_text()).get("extra", {}).get("pcdms_template", p.stem)] = p
    return out


def load_workflows() -> dict[str, dict]:
    """The shipped templates by id (see ``workflow_files``)."""
    return {key: json.loads(p.read_text()) for key, p in workflow_files().items()}


def offline_object_info(pack) -> dict:
    """Schemas without a running ComfyUI: our nodes (through the stand-ins) plus the core and
    comfyui_controlnet_aux nodes the workflows use (a snapshot of their /object_info)."""
    import asyncio

    import comfy_stub

    async def node_list():
        extension = await pack.comfy_entrypoint()
        return await extension.get_node_list()

    info = json.loads(CORE_SCHEMAS.read_text())
    for cls in asyncio.run(node_list()):
        entry = comfy_stub.object_info(cls)
        info[entry["name"]] = entry
    return info


TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos


def node_rect(node: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a node as drawn: its size below pos, its title bar above."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def overlapping_nodes(workflow: dict) -> list[tuple[int, int]]:
    """Pairs of node ids whose drawn rectangles overlap (one would hide the other's widgets)."""
    rects = [(n["id"], node_rect(n)) for n in workflow["nodes"]]
    pairs = []
    for i, (a, (l1, t1, r1, b1)) in enumerate(rects):
        for b, (l2, t2, r2, b2) in rects[i + 1:]:
            if l1 < r2 and l2 < r1 and t1 < b2 and t2 < b1:
                pairs.append((a, b))
    return pairs
