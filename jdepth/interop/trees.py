"""Checked merging and comparison of variable trees (pretrained weights into initial ones).

Imported weights must land exactly where the model expects them: a key that the model lacks, a
shape that differs (a ResNet-50 file for a ResNet-18 encoder, a 3-channel conv1 for the pose
encoder) or, for a full import, a variable the file does not provide, is an error that names it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import traverse_util

Tree = dict


def _flat(tree: Mapping) -> dict:
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def overlay(target: Mapping, source: Mapping, where: str) -> Tree:
    """`target` with every leaf that `source` has replaced by the source's value.

    Args:
        target: the initial tree (arrays or ShapeDtypeStructs; only shapes and dtypes are read).
        source: pretrained values for a subset of the target's leaves.
        where: what is being loaded, for error messages (e.g. "imagenet -> depth/encoder").

    Returns:
        A new tree (the inputs are not modified); replaced leaves take the target's dtype.
    """
    flat_target, flat_source = _flat(target), _flat(source)
    unknown = sorted(_name(p) for p in flat_source if p not in flat_target)
    if unknown:
        raise ValueError(f"{where}: the model has no variable {', '.join(unknown[:5])}"
                         + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    merged = dict(flat_target)
    for path, value in flat_source.items():
        expected = flat_target[path]
        value = np.asarray(value)
        if tuple(value.shape) != tuple(expected.shape):
            raise ValueError(
                f"{where}: {_name(path)} has shape {value.shape} in the weights but "
                f"{tuple(expected.shape)} in the model"
            )
        merged[path] = value.astype(expected.dtype)
    return traverse_util.unflatten_dict(merged)


def matching_subset(source: Mapping, target: Mapping) -> Tree:
    """The leaves of `source` whose path exists in `target` with the same shape (for starting one
    architecture from another's weights where their variables coincide)."""
    flat_target = _flat(target)
    kept = {path: value for path, value in _flat(source).items()
            if path in flat_target and tuple(np.shape(value)) == tuple(flat_target[path].shape)}
    return traverse_util.unflatten_dict(kept)


def check_complete(tree: Mapping, expected: Mapping, where: str) -> None:
    """Raises unless `tree` has exactly the leaves and shapes of `expected`."""
    flat, flat_expected = _flat(tree), _flat(expected)
    missing = sorted(_name(p) for p in flat_expected if p not in flat)
    extra = sorted(_name(p) for p in flat if p not in flat_expected)
    if missing or extra:
        raise ValueError(
            f"{where}: variables differ from the model's; missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for path, value in flat.items():
        if tuple(np.shape(value)) != tuple(flat_expected[path].shape):
            raise ValueError(
                f"{where}: {_name(path)} has shape {np.shape(value)}, the model expects "
                f"{tuple(flat_expected[path].shape)}"
            )


def covers(source: Mapping, target: Mapping, prefixes: tuple[str, ...]) -> list[str]:
    """Leaves of `target` whose first key starts with one of `prefixes` but `source` lacks."""
    flat_source = _flat(source)
    return sorted(
        _name(p) for p in _flat(target) if p[0].startswith(prefixes) and p not in flat_source
    )
