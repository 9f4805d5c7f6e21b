"""Reading and writing PyTorch-layout state dicts: `.pth` through torch, `.npz` without it.

torch is an optional dependency (`pip install -e ".[torch]"`): only `.pth` files need it. A
state dict in memory is `{key: np.ndarray}` plus, for the reference checkpoints' encoder files, a
few plain Python values without a dot in their key (`height`, `width`, `use_stereo`,
`min_depth_bin`, `max_depth_bin`), which are kept as they are.

In a `.npz` the same keys hold the arrays; the plain values become 0-d arrays and are turned back
into Python scalars on reading (tensor entries such as `num_batches_tracked` stay 0-d arrays).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

StateDict = dict[str, Any]

TORCH_HINT = "install the optional torch extra: pip install -e '.[torch]' (or torch==2.13.0)"
EXTENSIONS = (".pth", ".npz")


def import_torch():
    """The torch module, or an ImportError that says how to get it."""
    try:
        import torch  # noqa: PLC0415 - optional dependency, imported only when a .pth is used
    except ImportError as err:
        raise ImportError(f"reading or writing .pth files needs PyTorch; {TORCH_HINT}") from err
    return torch


def is_extra(key: str) -> bool:
    """Entries without a dot are metadata the reference trainers add, not module tensors."""
    return "." not in key


def load_state_dict(path: str) -> StateDict:
    """Reads a `.pth` (torch) or `.npz` state dict into numpy arrays and plain values.

    `.pth` files are read with `weights_only=True` (no arbitrary unpickling) onto the CPU, which
    also reads the reference's GPU-saved checkpoints.
    """
    ext = os.path.splitext(path)[1]
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {
                k: (data[k].item() if is_extra(k) and data[k].ndim == 0 else data[k]) for k in data
            }
    if ext != ".pth":
        raise ValueError(f"{path}: unknown state-dict format (expected one of {EXTENSIONS})")
    torch = import_torch()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping), got {type(raw).__name__}")
    return {k: (v.detach().cpu().numpy() if torch.is_tensor(v) else v) for k, v in raw.items()}


def save_state_dict(path: str, state: Mapping[str, Any]) -> None:
    """Writes `state` as `.pth` (torch tensors; plain values stay plain) or `.npz`."""
    ext = os.path.splitext(path)[1]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext == ".npz":
        np.savez(path, **{k: np.asarray(v) for k, v in state.items()})
        return
    if ext != ".pth":
        raise ValueError(f"{path}: unknown state-dict format (expected one of {EXTENSIONS})")
    torch = import_torch()
    # np.array copies: torch.from_numpy needs a writable array and must not alias the caller's.
    tensors = {
        k: (torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v)
        for k, v in state.items()
    }
    torch.save(tensors, path)


def load_checkpoint_dir(directory: str, names: tuple[str, ...]) -> dict[str, StateDict]:
    """The state dicts `NAME.pth` (or `NAME.npz`) present in a reference weights folder.

    Args:
        directory: e.g. Monodepth2's `models/weights_19` or a released `mono_640x192` folder.
        names: the file stems to look for (missing ones are left out; `adam.pth` is never read).

    Returns:
        {name: state dict}.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such weights folder")
    found = {}
    for name in names:
        for ext in EXTENSIONS:
            path = os.path.join(directory, name + ext)
            if os.path.exists(path):
                found[name] = load_state_dict(path)
                break
    if not found:
        raise FileNotFoundError(
            f"{directory}: none of {', '.join(n + '.pth' for n in names)} (or .npz) found"
        )
    return found


def save_checkpoint_dir(directory: str, files: Mapping[str, StateDict], ext: str = ".pth") -> list:
    """Writes each state dict as `directory/NAME{ext}`; returns the paths written."""
    paths = []
    for name, state in files.items():
        path = os.path.join(directory, name + ext)
        save_state_dict(path, state)
        paths.append(path)
    return paths
