"""Exports a trained jdepth model's weights for use outside jdepth.

    python tools/export_params.py --workdir runs/md2 [--step N] \
        [--torch_dir OUT_DIR [--format pth|npz]] [--npz OUT.npz]

--torch_dir writes the Monodepth2 weights-folder layout (encoder.pth, depth.pth, pose_encoder.pth,
pose.pth; see jdepth/interop/checkpoints.py), loadable with `load_state_dict(strict=True)` into the
reference networks and usable by the reference's own scripts (encoder.pth carries height, width
and use_stereo=False). `--format npz` writes the same keys and layouts as .npz (no torch needed).

--npz writes one flat file with jdepth's names and layouts (jdepth/interop/params_npz.py documents
them), together with the run's config.

For a network that runs with jax alone (weights baked into a StableHLO artifact) see
tools/export_stablehlo.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a jdepth training run (config.json)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--torch_dir", help="write the Monodepth2 weights-folder layout here")
    parser.add_argument("--format", choices=("pth", "npz"), default="pth",
                        help="file type in --torch_dir (pth needs torch)")
    parser.add_argument("--npz", help="write a flat jdepth params .npz here")
    args = parser.parse_args(argv)
    if not args.torch_dir and not args.npz:
        parser.error("nothing to do: give --torch_dir and/or --npz")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after argument parsing so `--help` answers without starting JAX.
    from jdepth.interop import checkpoints, files, params_npz
    from jdepth.training import checkpoint, recipes

    config = checkpoint.load_config(args.workdir)
    restored, step = checkpoint.restore_params(
        args.workdir, recipes.abstract_state_tree(config), args.step
    )
    params, batch_stats = (_host(restored[c]) for c in ("params", "batch_stats"))
    extras = {"height": int(config.data.height), "width": int(config.data.width)}
    if args.npz:
        params_npz.save(args.npz, params, batch_stats,
                        config=json.loads(config.to_json_best_effort()), extras=extras)
        print(f"-> {args.npz}: jdepth params of {args.workdir} step {step}")
    if args.torch_dir:
        folder = checkpoints.to_torch(params, batch_stats, {**extras, "use_stereo": False})
        paths = files.save_checkpoint_dir(args.torch_dir, folder, ext="." + args.format)
        print(f"-> {args.torch_dir}: {', '.join(os.path.basename(p) for p in paths)} "
              f"(Monodepth2 layout) of {args.workdir} step {step}")
    return 0


def _host(tree):
    import jax

    return jax.tree_util.tree_map(np.asarray, tree)


if __name__ == "__main__":
    sys.exit(main())
