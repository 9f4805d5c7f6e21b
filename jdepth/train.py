"""Entry point: `python -m jdepth.train --config configs/<recipe>.py --workdir DIR [--config.x=y]`.

Trains, or resumes from the latest checkpoint in DIR. All logic lives in jdepth.training.loop so
tests and notebooks call the same `train_and_evaluate`. A problem found before training (an
unknown config key, a value out of range, bad data, a config that differs from the workdir's) is
printed without a traceback and exits with status 2.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and evaluation go here.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a workdir although the config differs from its config.json (the old one is kept as "
    "config.<time>.json). Without it such a resume is refused.")
flags.mark_flags_as_required(["config", "workdir"])

USAGE_ERROR = 2


def _load_config_file(spec: str):
    """`get_config([arg])` of a `path[:arg]` config spec, as ml_collections loads it."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        return None  # config_flags reports it
    module_spec = importlib.util.spec_from_file_location("jdepth_config_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def unknown_override_message(argv: list[str]) -> str | None:
    """One line per `--config.KEY` override whose KEY the config file lacks, or None.

    ml_collections finds these too, but only while parsing flags, as a 51-line traceback ending
    in AttributeError; here each gets one line with the closest valid keys.
    """
    from jdepth.training import config_check

    spec = config_check.config_file_arg(argv)
    keys = config_check.override_keys(argv)
    if not spec or not keys:
        return None
    config = _load_config_file(spec)
    if config is None:
        return None
    problems = config_check.unknown_key_problems(config, keys)
    if not problems:
        return None
    return "\n".join(f"error: {p} (in {spec.partition(':')[0]})" for p in problems)


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Orbax logs every save step at INFO through absl; keep the console for progress and results.
    absl_logging.set_verbosity(absl_logging.WARNING)
    from jdepth.training import distributed

    # Before any other JAX call: the backend is built with the distributed client (README,
    # "Multi-host training"); a single-process run starts nothing here.
    try:
        layout = distributed.initialize_from_config(_CONFIG.value)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(USAGE_ERROR)
    if layout is not None:
        import jax

        print(f"process {jax.process_index()} of {jax.process_count()} ({layout.source}): "
              f"{jax.local_device_count()} local of {jax.device_count()} devices", flush=True)
    from jdepth.data.validate import ValidationError
    from jdepth.training.checkpoint import CheckpointMismatchError, CheckpointWriteError
    from jdepth.training.loop import train_and_evaluate

    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                           allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except (ValidationError, CheckpointMismatchError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(USAGE_ERROR)
    except CheckpointWriteError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    message = unknown_override_message(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        sys.exit(USAGE_ERROR)

    from jdepth import allocator

    allocator.reexec_with_fast_allocator()  # before JAX starts (jdepth/allocator.py)
    app.run(main)
