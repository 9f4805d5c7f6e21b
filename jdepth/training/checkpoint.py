"""Orbax checkpoints of the train state together with the data-iterator state.

Layout of a workdir:
  W/config.json            the full config of the run (compared on resume before it is rewritten;
                           jdepth/training/preflight.py); W/config.<time>.json: configs replaced
                           with --allow_config_change
  W/checkpoints/<step>/    orbax step folders, saved atomically together:
                           "model" (params, batch_stats, extra: all that inference needs),
                           "opt" (step, optimizer state) and "data" (grain iterator state, JSON)

Resume precedence (train loop): a checkpoint in the workdir > `config.init.checkpoint` (restore
params from another run's workdir, e.g. a teacher) > scratch. The iterator state is what makes a
resumed run see exactly the batches the killed run would have seen next.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jdepth.training import config_check


def _to_host(tree):
    """Pulls a pytree of device arrays to host numpy."""
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def _abstract(tree):
    """Shape/dtype targets for orbax from concrete arrays or ShapeDtypeStructs alike."""
    return jax.tree_util.tree_map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else ocp.utils.to_shape_dtype_struct(
            np.asarray(x)
        ),
        tree,
    )


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the checkpoints folder is not writable)."""


class CheckpointMismatchError(ValueError):
    """A workdir's checkpoint does not fit the state the current config builds."""


def checkpoint_dir(workdir: str) -> str:
    """`<workdir>/checkpoints`, absolute."""
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds at least one finished checkpoint (a numbered step folder)."""
    directory = checkpoint_dir(workdir)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


class Checkpointer:
    """Thin wrapper around `ocp.CheckpointManager` for (model, optimizer, iterator state) triples.

    Saves are synchronous: an asynchronous save that fails (a checkpoints folder that is not
    writable) left a background thread waiting forever, so the process hung after printing the
    PermissionError. A synchronous save raises `CheckpointWriteError` in the train loop instead
    and costs about a second per save at KITTI size, every `train.ckpt_every_steps` steps.

    Several processes (README, "Multi-host training"): every process calls `save` with the same
    host trees (its copy of the replicated state) and `restore`. Orbax writes numpy leaves from
    process 0 only, and its metadata, the JSON item and the commit from the primary host, between
    barriers of all processes; restoring reads the whole tree in every process. A checkpoint is
    therefore written once and holds no sharding, so it resumes on any process count.
    """

    def __init__(self, workdir: str, max_to_keep: int = 3):
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, model: Any, opt: Any, data_state: dict | None, force=False):
        """Saves step `step` and returns when it is on disk (orbax commits it atomically).

        Raises:
          CheckpointWriteError: naming the folder, when orbax cannot write it.
        """
        args = ocp.args.Composite(
            model=ocp.args.StandardSave(_to_host(model)),
            opt=ocp.args.StandardSave(_to_host(opt)),
            data=ocp.args.JsonSave(data_state if data_state is not None else {}),
        )
        try:
            self.manager.save(step, args=args, force=force)
            self.manager.wait_until_finished()
        except OSError as exc:
            raise CheckpointWriteError(
                f"{self.directory}: cannot write checkpoint {step}: {exc}. Make the folder "
                "writable (or use another --workdir) and run the same command again to resume "
                "from the last checkpoint."
            ) from exc

    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        return step

    def restore(self, model: Any, opt: Any, step: int | None = None) -> tuple[Any, Any, dict, int]:
        """Restores everything into the structures of `model` and `opt` (arrays or abstract).

        Returns:
          (model tree, opt tree, data-iterator state dict, step).
        """
        step = self._step_or_latest(step)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(_abstract(model)),
                opt=ocp.args.StandardRestore(_abstract(opt)),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored["model"], restored["opt"], restored["data"] or {}, step

    def restore_model(self, model: Any, step: int | None = None) -> tuple[Any, int]:
        """Restores only the model item (params, batch_stats, extra)."""
        step = self._step_or_latest(step)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(_abstract(model)))
        )
        return restored["model"], step

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(workdir: str, target_tree: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores the model item of another run (teacher for distillation, model for eval)."""
    ckpt = Checkpointer(workdir)
    try:
        return ckpt.restore_model(target_tree, step)
    finally:
        ckpt.close()


def read_config_json(workdir: str) -> dict | None:
    """The dict of `W/config.json`, or None when there is none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def config_as_dict(config) -> dict:
    """The config as `W/config.json` stores it (JSON types: tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def write_config(workdir: str, config, keep_old: bool = False) -> str | None:
    """Writes W/config.json atomically; with `keep_old`, first moves the existing one aside.

    Returns:
      the path the old config was kept at (`W/config.<YYYYmmdd-HHMMSS>.json`), or None.
    """
    path = os.path.join(workdir, "config.json")
    kept = None
    if keep_old and os.path.exists(path):
        kept = os.path.join(workdir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
        os.replace(path, kept)
    os.makedirs(workdir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)
    return kept


def save_config(workdir: str, config) -> None:
    """Writes W/config.json unless it holds another run's config (tools that create workdirs).

    Raises:
      ValueError: naming config.json and the changed keys (paths and `FREE_KEYS` may differ).
    """
    old = read_config_json(workdir)
    if old is not None:
        changed = [c for c in config_check.changed_keys(old, config_as_dict(config))
                   if c[0] not in config_check.FREE_KEYS | config_check.PATH_KEYS]
        if changed:
            raise ValueError(
                f"{os.path.join(workdir, 'config.json')}: the workdir holds a run with a different "
                f"config ({config_check.format_changes(changed)}); use a new --workdir or the "
                "same config"
            )
    write_config(workdir, config)


def load_config(workdir: str):
    """The ConfigDict a run was trained with (for evaluation, prediction, export)."""
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a jdepth workdir (no config.json)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
