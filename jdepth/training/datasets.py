"""Where the training data comes from: a KITTI root, your own sequences, or the synthetic set.

`config.data.synthetic` (a dict of generator arguments) with no `config.data.root` means: generate
the synthetic KITTI tree once into `config.data.cache_dir` (default `~/.cache/jdepth`), keyed by the
generator arguments, and train on it. The generator writes to a temporary folder and renames it
when complete, so an interrupted generation is never mistaken for a dataset.

`config.data.sequences.path` (configs/video.py) means: your own videos or frame folders, prepared
once into a KITTI-layout tree in the same cache (jdepth/data/sequence_cache.py), which every
later step reads as a KITTI root. `config.data.gt_kind` 'auto' then becomes 'dense'
(score against the sequences' known depth) or 'none' (no ground truth: no evaluation).
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
    return os.path.join(_cache_dir(config), f"synthetic_kitti_{key}")


def _cache_dir(config) -> str:
    return os.path.expanduser(config.data.get("cache_dir") or "~/.cache/jdepth")


def uses_sequences(config) -> bool:
    """Whether the config trains on your own sequences (`data.sequences.path` set)."""
    seq = config.data.get("sequences")
    return bool(seq is not None and seq.get("path"))


def sequence_settings(config):
    """The prepare settings of `config.data.sequences` (jdepth/data/sequence_cache.py)."""
    from jdepth.data import sequence_cache

    s = config.data.sequences
    return sequence_cache.Settings(
        path=s.path, intrinsics=s.get("intrinsics"), offsets=tuple(config.data.frame_ids),
        stride=int(s.stride), static_threshold=float(s.static_threshold), holdout=s.holdout,
        val_fraction=float(s.val_fraction), test_fraction=float(s.test_fraction))


def data_ready(config) -> bool:
    """Whether the data needs no minutes of generating or decoding before the run can start."""
    if config.data.get("root"):
        return True
    if uses_sequences(config):
        from jdepth.data import sequence_cache

        return sequence_cache.is_prepared(sequence_settings(config), _cache_dir(config))
    return synthetic_ready(config)


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
    (jdepth/training/preflight.py), which reports every problem at once; the sequences' own
    problems (unreadable video, bad intrinsics, too short) are reported by their prepare step
    as a ValidationError.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    d = config.data
    if uses_sequences(config) and not d.get("root"):  # a resolved config keeps its tree
        from jdepth.data import sequence_cache

        print(f"Preparing the sequences of {d.sequences.path} ...", flush=True)
        d.root = sequence_cache.prepare(sequence_settings(config), _cache_dir(config))
        if d.get("gt_kind") == "auto":
            summary = sequence_cache.read_summary(d.root)
            d.gt_kind = "dense" if sequence_cache.has_depth(summary) else "none"
    elif not d.get("root"):
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
