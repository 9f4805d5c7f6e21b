"""Which operations a compiled train step spends its time in (tools/profile_step.py).

A `jax.profiler` trace records one event per executed HLO instruction (XLA:CPU thunks; GPU
kernels carry the instruction in `hlo_op`). The compiled module's text says, for every
instruction, its `op_name` (Flax module path: `jvp(DepthNet)/encoder/layer1_0/...`) and its
Python stack (FileNames / FunctionNames / FileLocations / StackFrames tables). Joining the two
attributes each event to a part of the step: an operation (sampling, SSIM, cost volume, ...) by a
named call in its op_name or the innermost jdepth function on its stack (`CATEGORY_RULES`), else
a network by its Flax module path, so a warp or cost volume inside a module's `__call__` counts
as the operation. A fusion is
attributed by its own metadata, which XLA takes from the fused root: ops fused into another
part's root are counted there. Instructions XLA created without metadata (layout transposes of
kernels, the index iotas of a pooling gradient) take the part of the nearest instruction that
consumes their result, else of the nearest one they read.

Times are sums of event durations. On XLA:CPU independent thunks can run concurrently, so the
sum can exceed the step's wall time: compare shares, not absolute sums, with the step time.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path

# (category, function names or file suffixes) tried innermost stack frame first.
CATEGORY_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sampling (bilinear gather + its scatter gradient)",
     ("bilinear_sample", "_sample_border", "_sample_border_fwd", "_sample_border_bwd",
      "_gather_taps", "_bilinear_cell")),
    ("warp geometry (backproject, project)",
     ("inverse_warp", "_reproject", "_reproject_fwd", "_reproject_bwd", "backproject", "project",
      "transformation_from_parameters", "rotation_from_axisangle")),
    ("SSIM", ("ssim_loss", "_ssim_terms", "_ssim_loss_fwd", "_ssim_loss_bwd", "_box_sum_3x3",
              "_reflect_box_mean_adjoint")),
    ("cost volume", ("jdepth/cost_volume.py",)),
    ("photometric L1, min reprojection, automask", ("jdepth/losses/photometric.py",
                                                    "jdepth/losses/monodepth.py")),
    ("smoothness", ("jdepth/losses/smoothness.py",)),
    ("other losses", ("jdepth/losses/",)),
    ("optimizer update", ("jdepth/training/state.py", "optax/")),
    ("input augmentation (colour jitter)", ("jdepth/data/",)),
)

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([^\s=]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9\-_]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_NAME = re.compile(r"%([^\s,(){}=]+)")
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_TABLE_ROW = re.compile(r"^(\d+)\s+(.*)$")
_FIELDS = re.compile(r"(\w+)=(\d+)")
# Control-flow thunks contain the thunks of their bodies: counting both would count twice.
_CONTAINERS = {"while", "conditional", "call"}


def parse_module(hlo_text: str) -> dict[str, dict]:
    """Instruction name -> {"opcode", "op_name", "operands", "stack": [(file, function), ...]}.

    The stack is innermost frame first; operands are the instruction names the line reads.

    Args:
      hlo_text: `jax.stages.Compiled.as_text()` of the step.
    """
    tables: dict[str, dict[int, str]] = collections.defaultdict(dict)
    table = None
    instructions = {}
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            table = line
            continue
        if table is not None:
            row = _TABLE_ROW.match(line)
            if row:
                tables[table][int(row.group(1))] = row.group(2)
                continue
            table = None
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        rest = match.group(2)
        opcode = _OPCODE.search(rest)
        op_name = _OP_NAME.search(rest)
        frame = _FRAME.search(rest)
        instructions[match.group(1)] = {
            "opcode": opcode.group(1) if opcode else "",
            "operands": _NAME.findall(rest.split(", metadata=")[0]),
            "op_name": op_name.group(1) if op_name else "",
            "frame": int(frame.group(1)) if frame else None,
        }
    files = {k: v.strip('"') for k, v in tables["FileNames"].items()}
    functions = {k: v.strip('"') for k, v in tables["FunctionNames"].items()}
    locations = {k: dict((f, int(v)) for f, v in _FIELDS.findall(v))
                 for k, v in tables["FileLocations"].items()}
    frames = {k: dict((f, int(v)) for f, v in _FIELDS.findall(v))
              for k, v in tables["StackFrames"].items()}

    def stack(frame_id):
        out, seen = [], set()
        while frame_id in frames and frame_id not in seen:
            seen.add(frame_id)
            location = locations.get(frames[frame_id]["file_location_id"], {})
            out.append((files.get(location.get("file_name_id"), ""),
                        functions.get(location.get("function_name_id"), "")))
            frame_id = frames[frame_id].get("parent_frame_id")
        return out

    for info in instructions.values():
        info["stack"] = stack(info.pop("frame"))
        # Computations (calls=, to_apply=) are not instructions: keep only what the line reads.
        info["operands"] = [name for name in info["operands"] if name in instructions]
    return instructions


def _strip(element: str) -> str:
    """``transpose(jvp(PoseNet))`` -> ``PoseNet``."""
    return re.sub(r"^(?:\w+\()+|\)+$", "", element)


def _scopes(op_name: str) -> list[str]:
    return [_strip(part) for scope in op_name.split(";") for part in scope.split("/")]


def module_part(op_name: str) -> str | None:
    """``transpose(jvp(PoseNet))/encoder/layer3_0/...`` -> ``PoseNet/encoder`` (None: no module)."""
    for scope in op_name.split(";"):
        parts = scope.split("/")
        for i, part in enumerate(parts):
            name = _strip(part)
            if re.fullmatch(r"[A-Z][A-Za-z0-9_]*", name) and not name.isupper():
                # The last path element is the primitive (`conv_general_dilated`), not a module.
                sub = parts[i + 1] if i + 2 < len(parts) else ""
                sub = sub if sub[:1].islower() and "(" not in sub else ""
                return f"{name}/{sub}" if sub else name
    return None


def categorize(info: dict) -> str | None:
    """The part of the step an instruction's own metadata names, None if it has none.

    Operations before modules: the cost volume or a warp inside a network's `__call__` counts as
    the operation, the rest of the module's ops as the network.
    """
    # Named calls first, innermost last in the path: a custom_vjp backward (jax.named_call in
    # jdepth/geometry.py, jdepth/losses/photometric.py) has only its caller's stack.
    for scope in reversed(_scopes(info["op_name"])):
        for category, keys in CATEGORY_RULES:
            if scope in keys:
                return category
    for file, function in info["stack"]:
        function = function.split(".")[0]  # `_gather_taps.<locals>.<listcomp>`
        for category, keys in CATEGORY_RULES:
            if function in keys or any(key in file for key in keys if "/" in key):
                return category
    part = module_part(info["op_name"])
    if part is not None:
        return f"network: {part}"
    return "other" if info["op_name"] or info["stack"] else None


def categories(instructions: dict[str, dict], max_hops: int = 8) -> dict[str, str]:
    """Instruction name -> part, metadata-less ones through their users, then their operands."""
    users: dict[str, list[str]] = collections.defaultdict(list)
    for name, info in instructions.items():
        for operand in info["operands"]:
            users[operand].append(name)
    direct = {name: categorize(info) for name, info in instructions.items()}

    def nearest(name: str, neighbours) -> str | None:
        frontier, seen = [name], {name}
        for _ in range(max_hops):
            frontier = [n for f in frontier for n in neighbours(f) if n not in seen]
            seen.update(frontier)
            for n in frontier:
                if direct.get(n) is not None:
                    return direct[n]
            if not frontier:
                return None
        return None

    out = {}
    for name, category in direct.items():
        if category is None:
            category = (nearest(name, lambda n: users.get(n, ()))
                        or nearest(name, lambda n: instructions[n]["operands"])
                        or "no source (XLA-inserted)")
        out[name] = category
    return out


def trace_events(trace_dir: str) -> list[dict]:
    """Complete ("X") events that name an HLO instruction, from the newest perfetto trace."""
    paths = sorted(Path(trace_dir).rglob("perfetto_trace.json.gz"),
                   key=lambda p: p.stat().st_mtime)
    if not paths:
        raise FileNotFoundError(f"hlo_profile: no perfetto_trace.json.gz under {trace_dir}; was "
                                "the trace started with create_perfetto_trace=True?")
    with gzip.open(paths[-1]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]


def attribute(events: list[dict], instructions: dict[str, dict], module: str | None = None
              ) -> dict[str, dict]:
    """Category -> {"us": summed microseconds, "count": events, "top": [(op, us), ...]}.

    Args:
      events: from `trace_events`.
      instructions: from `parse_module`.
      module: keep only events of this HLO module (e.g. "jit_train_step"), None: all.
    """
    parts = categories(instructions)
    totals: dict[str, dict] = {}
    per_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for event in events:
        args = event["args"]
        if module is not None and args.get("hlo_module", module) != module:
            continue
        name = args["hlo_op"]
        info = instructions.get(name)
        if info is not None and info["opcode"] in _CONTAINERS:
            continue
        category = parts[name] if info is not None else "unattributed"
        entry = totals.setdefault(category, {"us": 0.0, "count": 0})
        entry["us"] += float(event.get("dur", 0.0))
        entry["count"] += 1
        per_op[category][name] += float(event.get("dur", 0.0))
    for category, entry in totals.items():
        entry["top"] = per_op[category].most_common(3)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]["us"]))
