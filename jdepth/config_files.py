"""Config files that build on other config files.

ml_collections runs a config file by path, so `configs/` is no package and one config cannot
`import` another: `sibling(__file__, "demo")` loads `configs/demo.py` next to the calling file
and returns it as a module (its `get_config()` and helpers such as `add_manydepth`). Tools that
build a config outside `jdepth.train` apply its command-line overrides with `override`.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from types import ModuleType


def sibling(config_file: str, name: str) -> ModuleType:
    """The config module `name` (without .py) from the folder of `config_file`."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{config_file}: no config {name!r} beside it ({path})")
    spec = importlib.util.spec_from_file_location(f"jdepth_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def override(config, assignment: str) -> None:
    """`section.field=value` (or `--config.section.field=value`, as jdepth.train takes it) into
    `config`, the value read as the field's current type (tuples and numbers as Python literals).
    """
    path, sep, value = assignment.removeprefix("--config.").partition("=")
    if not sep:
        raise ValueError(f"config override {assignment!r}: expected section.field=value")
    *parents, field = path.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    current = node[field]
    if isinstance(current, bool):
        node[field] = value.lower() in ("1", "true")
    elif isinstance(current, str) or current is None:
        node[field] = value
    else:
        node[field] = type(current)(ast.literal_eval(value))
