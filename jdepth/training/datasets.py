"""Where the training data comes from: a KITTI root, or the synthetic set generated on first use.

`config.data.synthetic` (a dict of generator arguments) with no `config.data.root` means: generate
the synthetic KITTI tree once into `config.data.cache_dir` (default `~/.cache/jdepth`), keyed by the
generator arguments, and train on it. The generator writes to a temporary folder and renames it
when complete, so an interrupted generation is never mistaken for a dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import ml_collections


def _synthetic_root(config) -> str:
    args = config.data.synthetic.to_dict()
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:10]
    cache = os.path.expanduser(config.data.get("cache_dir") or "~/.cache/jdepth")
    return os.path.join(cache, f"synthetic_kitti_{key}")


def synthetic_ready(config) -> bool:
    """Whether the synthetic set of `config.data.synthetic` is already generated."""
    return os.path.exists(os.path.join(_synthetic_root(config), "splits", "test_files.txt"))


def ensure_synthetic(config) -> str:
    """Generates the synthetic dataset described by `config.data.synthetic` unless it exists."""
    from jdepth.data import synthetic

    root = _synthetic_root(config)
    if os.path.exists(os.path.join(root, "splits", "test_files.txt")):
        return root
    # One temporary folder per process: the processes of a multi-process run may all generate
    # at once; the first rename wins and the others drop their identical copies.
    tmp = f"{root}.partial{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"Generating the synthetic KITTI dataset into {root} (once) ...", flush=True)
    synthetic.make_dataset(tmp, **config.data.synthetic.to_dict())
    try:
        os.replace(tmp, root)
    except OSError:
        if not os.path.exists(os.path.join(root, "splits", "test_files.txt")):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def resolve_data(config, workdir: str) -> ml_collections.ConfigDict:
    """Returns a copy of `config` with `data.root` and the split files filled in.

    Whether those exist and hold usable frames is the validation pass's job
    (jdepth/training/preflight.py), which reports every problem at once.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    d = config.data
    if not d.get("root"):
        if not d.get("synthetic") or not d.synthetic.to_dict():
            raise ValueError(
                "config.data.root is not set: pass --config.data.root=/path/to/kitti_raw "
                "(or use configs/demo.py, which generates synthetic data)"
            )
        d.root = ensure_synthetic(config)
    split_dir = d.get("split_dir") or os.path.join(d.root, "splits")
    for split in ("train", "val", "test"):
        key = f"{split}_split"
        if not d.get(key):
            d[key] = os.path.join(split_dir, f"{split}_files.txt")
    return config
