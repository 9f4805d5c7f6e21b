"""jdepth variables as one flat `.npz`: readable by anything that reads numpy, no JAX or torch.

Key names (documented format `jdepth-params-v1`):

    params/<network>/<module>/.../<leaf>        e.g. params/depth/encoder/layer1_0/conv1/kernel
    batch_stats/<network>/<module>/.../<leaf>   e.g. batch_stats/pose/encoder/bn1/mean
    meta.json                                   a 0-d unicode array: {"format", "config",
                                                "extras"} (config: the run's ConfigDict as a
                                                dict, or null; extras: reference plain entries)

Arrays keep jdepth's layouts: conv kernels are HWIO `[kh, kw, in, out]`, BatchNorm parameters
`scale`/`bias`, statistics `mean`/`var`; networks are "depth", "pose" (and "mono", ManyDepth's
single-frame teacher). Everything is float32 as trained. Reading needs no pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

FORMAT = "jdepth-params-v1"
COLLECTIONS = ("params", "batch_stats")
_META_KEY = "meta.json"


def flat_names(params: Mapping, batch_stats: Mapping) -> dict[str, np.ndarray]:
    """{"params/depth/encoder/conv1/kernel": array, ...} for both collections."""
    flat = {}
    for collection, tree in zip(COLLECTIONS, (params, batch_stats)):
        for path, value in traverse_util.flatten_dict(dict(tree)).items():
            flat["/".join((collection, *path))] = np.asarray(value)
    return flat


def save(
    path: str,
    params: Mapping,
    batch_stats: Mapping,
    *,
    config: Mapping | None = None,
    extras: Mapping[str, Any] | None = None,
) -> None:
    """Writes the variables (and optional config / reference extras) to `path` (.npz)."""
    if not path.endswith(".npz"):
        raise ValueError(f"{path}: the params file must end in .npz")
    # Extras read from .pth files may be 0-d arrays (ManyDepth's depth bins): JSON wants scalars.
    extras = {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, np.generic)) else v)
              for k, v in (extras or {}).items()}
    meta = {"format": FORMAT, "config": config, "extras": extras}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **flat_names(params, batch_stats), **{_META_KEY: np.array(json.dumps(meta))})


def load(path: str) -> tuple[dict, dict, dict]:
    """Reads a params file written by `save`.

    Returns:
        (params, batch_stats, meta): the two trees keyed by network, and the meta dict with
        "format", "config" (dict or None) and "extras".
    """
    with np.load(path, allow_pickle=False) as data:
        if _META_KEY not in data or json.loads(str(data[_META_KEY])).get("format") != FORMAT:
            raise ValueError(f"{path}: not a jdepth params file (no {FORMAT} meta.json entry)")
        meta = json.loads(str(data[_META_KEY]))
        trees = {c: {} for c in COLLECTIONS}
        for key in data:
            if key == _META_KEY:
                continue
            collection, *rest = key.split("/")
            if collection not in trees or not rest:
                raise ValueError(f"{path}: unexpected entry {key!r}")
            trees[collection][tuple(rest)] = data[key]
    params, batch_stats = (traverse_util.unflatten_dict(trees[c]) for c in COLLECTIONS)
    return params, batch_stats, meta
