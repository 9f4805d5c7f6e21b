"""Orbax checkpoints of the train state together with the data-iterator state.

Layout of a workdir:
  W/config.json            the full config of the run (written once, compared on resume)
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
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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


class Checkpointer:
    """Thin wrapper around `ocp.CheckpointManager` for (model, optimizer, iterator state) triples."""

    def __init__(self, workdir: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, model: Any, opt: Any, data_state: dict | None, force=False):
        """Saves asynchronously (host copies are taken first, so training can go on)."""
        args = ocp.args.Composite(
            model=ocp.args.StandardSave(_to_host(model)),
            opt=ocp.args.StandardSave(_to_host(opt)),
            data=ocp.args.JsonSave(data_state if data_state is not None else {}),
        )
        self.manager.save(step, args=args, force=force)

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


def save_config(workdir: str, config) -> None:
    """Writes W/config.json; on resume, refuses a config that changes what was trained."""
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        new = json.loads(text)
        changed = [k for k in ("recipe", "model", "data") if old.get(k) != new.get(k)]
        # Paths may move between machines and the init file only matters at step 0; what defines
        # the model and its inputs may not change.
        changed = [k for k in changed if not _only_paths_differ(old.get(k), new.get(k))]
        if changed:
            raise ValueError(
                f"{path}: the workdir holds a run with a different config (sections {changed}); "
                "use a new --workdir or the same config"
            )
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


_PATH_KEYS = (
    "root", "split_dir", "train_split", "val_split", "test_split", "cache_dir", "num_workers",
    "encoder_init",
)


def _only_paths_differ(old, new) -> bool:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    keys = set(old) | set(new)
    return all(old.get(k) == new.get(k) for k in keys if k not in _PATH_KEYS)


def load_config(workdir: str):
    """The ConfigDict a run was trained with (for evaluation, prediction, export)."""
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a jdepth workdir (no config.json)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
