"""Predicts depth for images with a trained (or imported) jdepth model.

    python tools/predict.py --workdir runs/md2 --output_dir OUT [--device cpu|gpu] \
        [--step N] [--scale S] [--native_size] IMAGE_OR_FOLDER [...]

For every image (.png/.jpg; folders are searched recursively and mirrored under OUT) it writes

    NAME_depth.png   16-bit PNG, depth * 256 rounded (the KITTI depth-map convention; read it back
                     with `np.asarray(Image.open(p), np.float32) / 256`); depths over 255.99 clip
    NAME_depth.npy   float32 [H, W] depth
    NAME_disp.png    the disparity colour-mapped (magma-like, near = bright), for looking at; one
                     colour range for ALL images of the call (--color_range), so a flat
                     prediction looks flat and images compare with each other

at the image's own size (the disparity is upsampled bilinearly, align_corners=False, as
Monodepth2's test_simple.py does; --native_size keeps the network resolution). Depth is in the
model's units: up to an unknown scale for monocular training (multiply by a median-scaling factor
with --scale), metric after --scale 5.4 for Monodepth2's stereo-trained models.

An image that cannot be read (missing, truncated, not an image) is reported with its path and
skipped; the others are written, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--workdir", required=True, help="training run or tools/import_torch.py "
                        "workdir")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto",
                        help="JAX platform (auto: a GPU when JAX has one)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every depth by this")
    parser.add_argument("--native_size", action="store_true",
                        help="keep the network's resolution instead of each image's")
    parser.add_argument("--color_range", choices=("global", "image"), default="global",
                        help="disparity range of the colour map: 'global' (default) the 2nd-98th "
                        "percentile over all images of the call; 'image' each image's own "
                        "(stretches a flat map into noise; Monodepth2's test_simple)")
    return parser.parse_args(argv)


def find_images(inputs: list[str]) -> list[tuple[str, str]]:
    """(path, output stem relative to the output folder) per image, in a stable order."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            for root, _, names in sorted(os.walk(item)):
                for name in sorted(names):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        path = os.path.join(root, name)
                        found.append((path, os.path.splitext(os.path.relpath(path, item))[0]))
        elif os.path.isfile(item):
            found.append((item, os.path.splitext(os.path.basename(item))[0]))
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    stems = [stem for _, stem in found]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several inputs would write {duplicates[:3]}: pass their folder instead "
                         "(outputs then mirror the folder structure)")
    if not found:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {inputs}")
    return found


def to_size(disp: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] disparity resized bilinearly (align_corners=False, no antialiasing) to [H, W]."""
    from jdepth.losses.monodepth import upsample_disp

    return np.asarray(upsample_disp(disp[None, :, :, None], height, width))[0, :, :, 0]


def write_outputs(stem_path: str, depth: np.ndarray, disp: np.ndarray,
                  color_range: tuple[float, float] | None = None) -> None:
    """NAME_depth.png (uint16, depth*256), NAME_depth.npy, NAME_disp.png (colour, in
    `color_range` of disparity, or the image's own range when None)."""
    from jdepth.colormap import colorize

    os.makedirs(os.path.dirname(stem_path), exist_ok=True)
    depth16 = np.clip(np.round(depth * 256.0), 0, 65535).astype(np.uint16)
    Image.fromarray(depth16).save(stem_path + "_depth.png")
    np.save(stem_path + "_depth.npy", depth.astype(np.float32))
    vmin, vmax = color_range if color_range else (None, None)
    Image.fromarray(colorize(disp, vmin, vmax)).save(stem_path + "_disp.png")


# A map whose largest depth is within this factor of its smallest is reported as flat.
FLAT_RATIO = 1.05


def load_images(items: list[tuple[str, str]]):
    """Decodes each image with the project's loader, keeping going past unreadable ones.

    Args:
      items: (path, output stem) pairs.

    Returns:
      (loaded, failures): [(path, stem, uint8 [h, w, 3])] of the readable images, in order, and
      [(path, kitti.DataError)] of the others (missing, truncated, not an image; the error names
      the file). One bad file no longer aborts the good images of its batch.
    """
    from jdepth.data import kitti

    loaded, failures = [], []
    for path, stem in items:
        try:
            loaded.append((path, stem, kitti.load_image(path)))
        except kitti.DataError as exc:
            failures.append((path, exc))
    return loaded, failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device != "auto":
        # Must be set before JAX initialises its backends (first jdepth import below).
        os.environ["JAX_PLATFORMS"] = args.device.replace("gpu", "cuda")
    import jax

    from jdepth.inference import DepthPredictor

    images = find_images(args.inputs)
    predictor = DepthPredictor.from_workdir(args.workdir, args.step)
    print(f"model {args.workdir} ({predictor.width}x{predictor.height}) on "
          f"{jax.devices()[0].platform}; {len(images)} images -> {args.output_dir}")
    disps, failures = [], []
    for start in range(0, len(images), args.batch_size):
        loaded, failed = load_images(images[start : start + args.batch_size])
        for path, error in failed:
            print(f"skipped: {error}", file=sys.stderr, flush=True)
        failures.extend(failed)
        if loaded:
            arrays = [array for _, _, array in loaded]
            disps.extend(zip([(path, stem) for path, stem, _ in loaded],
                             [a.shape[:2] for a in arrays],
                             predictor.predict_disparity(arrays, batch_size=args.batch_size)))
    color_range = None
    if args.color_range == "global" and disps:
        every = np.concatenate([d.ravel() for _, _, d in disps])
        color_range = (float(np.percentile(every, 2)), float(np.percentile(every, 98)))
    for (path, stem), size, disp in disps:
        if not args.native_size:
            disp = to_size(disp, *size)
        depth = args.scale / disp
        write_outputs(os.path.join(args.output_dir, stem), depth, disp, color_range)
        flat = depth.max() < FLAT_RATIO * depth.min()
        print(f"{path}: {depth.shape[1]}x{depth.shape[0]}, depth min {depth.min():.3f} "
              f"median {np.median(depth):.3f} max {depth.max():.3f}"
              + (" (FLAT: the prediction is one depth everywhere)" if flat else ""))
    if color_range:
        print(f"colour range (disparity, all images): {color_range[0]:.4g} to "
              f"{color_range[1]:.4g}, i.e. depth {args.scale / color_range[1]:.3g} to "
              f"{args.scale / color_range[0]:.3g}")
    if failures:
        print(f"{len(failures)} of {len(images)} images could not be read (listed above as "
              "'skipped'); the others were written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
