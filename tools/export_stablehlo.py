"""Exports a trained jdepth depth network as a serialised StableHLO artifact for deployment.

    python tools/export_stablehlo.py --workdir runs/md2 --output runs/md2/depth.jax \
        [--step N] [--batch_size B] [--platforms cpu,cuda] [--teacher]

Writes OUTPUT (the `jax.export` serialisation, weights baked in) and OUTPUT.json (input size,
min/max depth, what the outputs are, recipe, jax version). The artifact runs with jax alone:
`jdepth.interop.stablehlo.load` (jax + numpy only) returns `images -> {"disparity", "depth"}` for
float32 [B, H, W, 3] in [0, 1] at the training resolution; see that module and README "Export for
deployment". The batch is symbolic unless --batch_size fixes it.

Single-frame networks only: the monodepth2 and student recipes; for multi-frame recipes
(manydepth) --teacher exports the single-frame mono teacher, and without it the export is refused.
The PyTorch / .npz weight export is tools/export_params.py.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a jdepth training run (config.json)")
    parser.add_argument("--output", required=True, help="artifact path; the sidecar is OUTPUT.json")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="fix the batch size (default: symbolic, any batch)")
    parser.add_argument("--platforms", default="cpu,cuda",
                        help="comma-separated jax.export platforms the artifact runs on")
    parser.add_argument("--teacher", action="store_true",
                        help="multi-frame recipes: export the single-frame mono teacher")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after argument parsing so `--help` answers without starting JAX.
    from jdepth.inference import DepthPredictor
    from jdepth.interop import stablehlo

    predictor = DepthPredictor.from_workdir(args.workdir, args.step)
    if args.teacher:
        if not hasattr(predictor.recipe, "lookup_frames"):
            print(f"error: --teacher is for multi-frame recipes; {predictor.config.recipe} has "
                  "one network", file=sys.stderr)
            return 2
        config = predictor.config
        config.eval.teacher = True  # as `jdepth.evaluate --teacher`: the mono network predicts
        predictor = DepthPredictor(config, predictor.params, predictor.batch_stats, predictor.extra)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    try:
        blob, meta = stablehlo.export(predictor, batch_size=args.batch_size, platforms=platforms)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta["source"] = {"workdir": os.path.abspath(args.workdir),
                      "step": "latest" if args.step is None else args.step}
    path, sidecar = stablehlo.save(args.output, blob, meta)
    print(f"-> {path} ({len(blob) / 2**20:.1f} MiB, {meta['network']} network of "
          f"{meta['recipe']}, input [{meta['batch']}, {meta['height']}, {meta['width']}, 3], "
          f"platforms {','.join(meta['platforms'])}) and {sidecar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
