"""Entry point: `python -m jdepth.train --config configs/<recipe>.py --workdir DIR [--config.x=y]`.

Trains, or resumes from the latest checkpoint in DIR. All logic lives in jdepth.training.loop so
tests and notebooks call the same `train_and_evaluate`.
"""

from __future__ import annotations

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and evaluation go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Orbax logs every save step at INFO through absl; keep the console for progress and results.
    absl_logging.set_verbosity(absl_logging.WARNING)
    from jdepth.training.loop import train_and_evaluate

    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    from jdepth import allocator

    allocator.reexec_with_fast_allocator()  # before JAX starts (jdepth/allocator.py)
    app.run(main)
