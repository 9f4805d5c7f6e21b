"""Prepares your own videos or frame folders once, without training (README "Train on your own
video"): decodes the videos into the frame cache, skips static stretches, writes the splits and
prints what it did. `python -m jdepth.train --config configs/video.py` does the same on its first
run and then finds this tree ready (same settings, same cache key).

  python tools/prepare_sequences.py --path data/my_videos [--intrinsics fx,fy,cx,cy] \
      [--config configs/video.py] [--config.data.sequences.stride=3 ...]

Any `--config.KEY=VALUE` override of the training command is accepted, so the tree is the one
that command will use. Prints the prepared root; exit status 2 with every problem listed (each
naming its file) when the sequences cannot be used.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/video.py", "Training config.")
_PATH = flags.DEFINE_string("path", None, "Video, frame folder or folder of several (overrides "
                            "config.data.sequences.path).")
_INTRINSICS = flags.DEFINE_string("intrinsics", None, "Shared 'fx,fy,cx,cy' or calibration file "
                                  "(overrides config.data.sequences.intrinsics).")


def main(argv) -> int:
    del argv
    from jdepth.data.validate import ValidationError
    from jdepth.training import datasets

    config = _CONFIG.value
    if _PATH.value:
        config.data.sequences.path = _PATH.value
    if _INTRINSICS.value:
        config.data.sequences.intrinsics = _INTRINSICS.value
    if not datasets.uses_sequences(config):
        print("error: pass --path (or --config.data.sequences.path)", file=sys.stderr)
        return 2
    try:
        resolved = datasets.resolve_data(config, workdir="")
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(resolved.data.root)
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
