"""Predicts depth for images, frame folders and videos with a trained (or imported) jdepth model.

    python tools/predict.py --workdir runs/md2 --output_dir OUT [--device cpu|gpu] \
        [--step N] [--scale S] [--native_size] [--ply [--ply_stride N]] \
        [--intrinsics fx,fy,cx,cy] IMAGE_OR_FOLDER_OR_VIDEO [...]

For every image (.png/.jpg; folders are searched recursively and mirrored under OUT, each folder's
images in natural order: frame_2 before frame_10) it writes

    NAME_depth.png   16-bit PNG, depth * 256 rounded (the KITTI depth-map convention; read it back
                     with `np.asarray(Image.open(p), np.float32) / 256`); depths over 255.99 clip
    NAME_depth.npy   float32 [H, W] depth
    NAME_disp.png    the disparity colour-mapped (magma-like, near = bright), for looking at; one
                     colour range for ALL images and video frames of the call (--color_range), so
                     a flat prediction looks flat and images compare with each other
    NAME_points.ply  with --ply: the coloured point cloud (binary little-endian PLY, float32
                     x y z in the camera frame: x right, y down, z forward; uchar red green blue),
                     every --ply_stride-th pixel of every --ply_stride-th row

at the image's own size (the disparity is upsampled bilinearly, align_corners=False, as
Monodepth2's test_simple.py does; --native_size keeps the network resolution). Depth is in the
model's units: up to an unknown scale for monocular training (multiply by a median-scaling factor
with --scale), metric after --scale 5.4 for Monodepth2's stereo-trained models, metric for
scale-aware recipes (config.eval.absolute_depth; the PLY header says which).

A video (.mp4/.avi/.mkv/.mov, decoded with PyAV: `pip install -e '.[video]'`) is predicted frame by
frame, in batches, into NAME_000000_depth.png ... (the files above per frame) and NAME_depth.mp4,
the input and its colour-mapped disparity side by side (H.264, or MPEG-4 part 2 where the PyAV
build has no H.264 encoder; an odd height gets one repeated bottom row, which 4:2:0 needs).

Multi-frame recipes (ManyDepth) match each frame against the previous one of its sequence: frame
t-1 of a video, or the previous image of the same folder for images found in a folder argument.
A frame without one (a video's first frame, an image given by itself) is matched against itself,
ManyDepth's static-camera evaluation. The matching needs pixel intrinsics, as does --ply: pass the
camera's `--intrinsics fx,fy,cx,cy` in pixels of the input's own size, or get Monodepth2's KITTI
intrinsics (fx = 0.58 W, fy = 1.92 H, principal point at the centre) scaled to each image.

An image or video that cannot be read (missing, truncated, not an image) is reported with its path
and skipped; the others are written, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np
from PIL import Image

# The readers of videos and frame folders live in jdepth/data/video.py (the custom-sequence data
# source reads frames through the same ones).
from jdepth.data.video import (  # numpy and PIL only: JAX is still free to pick its platform
    IMAGE_EXTENSIONS,
    decode_video,
    import_av,
    video_info,
)
from jdepth.data.video import folder_images as _folder_images
from jdepth.data.video import is_video as _is_video

# Video frames enter the global colour range through about this many evenly spaced pixels of their
# network-resolution disparity: 1 KB a frame (100 MB for an hour at 30 fps) instead of 0.5 MB at
# 640x192, and 2nd/98th percentiles of hundreds of thousands of samples barely move.
RANGE_SAMPLES_PER_FRAME = 256
# Encoders for the side-by-side video, best first: H.264 plays everywhere; MPEG-4 part 2 is in
# every FFmpeg build.
VIDEO_CODECS = ("h264", "mpeg4")


def _intrinsics(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[0] <= 0 or values[1] <= 0:
        raise argparse.ArgumentTypeError(f"expected fx,fy,cx,cy in pixels (fx, fy > 0), got "
                                         f"{text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders and/or video files")
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
    parser.add_argument("--ply", action="store_true",
                        help="also write NAME_points.ply, the coloured point cloud")
    parser.add_argument("--ply_stride", type=int, default=1,
                        help="--ply keeps every N-th pixel of every N-th row (N*N fewer points)")
    parser.add_argument("--intrinsics", type=_intrinsics, default=None,
                        help="fx,fy,cx,cy in pixels of the input's own size, for --ply and "
                        "multi-frame recipes (default: Monodepth2's KITTI intrinsics)")
    parser.add_argument("--progress_every", type=int, default=100,
                        help="without a terminal, a progress line every N frames (0: none)")
    args = parser.parse_args(argv)
    if args.ply_stride < 1:
        parser.error(f"--ply_stride must be >= 1, got {args.ply_stride}")
    if args.progress_every < 0:
        parser.error(f"--progress_every must be >= 0, got {args.progress_every}")
    return args






def find_images(inputs: list[str]) -> list[tuple[str, str]]:
    """(path, output stem relative to the output folder) per image, in a stable order."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            found.extend((path, os.path.splitext(os.path.relpath(path, item))[0])
                         for path in _folder_images(item))
        elif os.path.isfile(item):
            found.append((item, os.path.splitext(os.path.basename(item))[0]))
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    _refuse_duplicate_stems(found)
    if not found:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {inputs}")
    return found


def _refuse_duplicate_stems(found: list[tuple[str, str]]) -> None:
    stems = [stem for _, stem in found]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several inputs would write {duplicates[:3]}: pass their folder instead "
                         "(outputs then mirror the folder structure)")


def find_inputs(inputs: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(images, videos): (path, output stem) pairs; folders hold images only."""
    videos = [(item, os.path.splitext(os.path.basename(item))[0])
              for item in inputs if _is_video(item)]
    _refuse_duplicate_stems(videos)
    others = [item for item in inputs if not _is_video(item)]
    return (find_images(others) if others else []), videos


def frame_predecessors(inputs: list[str]) -> dict[str, str]:
    """path -> the image before it in its folder, for images found through a folder argument:
    the lookup frame t-1 of multi-frame recipes. Loose image files have none."""
    previous = {}
    for item in inputs:
        if os.path.isdir(item):
            paths = _folder_images(item)
            previous.update({b: a for a, b in itertools.pairwise(paths)
                             if os.path.dirname(a) == os.path.dirname(b)})
    return previous


def to_size(disp: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] disparity resized bilinearly (align_corners=False, no antialiasing) to [H, W]."""
    from jdepth.geometry import upsample_disp

    return np.asarray(upsample_disp(disp[None, :, :, None], height, width))[0, :, :, 0]


def write_depth(stem_path: str, depth: np.ndarray) -> None:
    """NAME_depth.png (uint16, depth*256) and NAME_depth.npy."""
    os.makedirs(os.path.dirname(stem_path), exist_ok=True)
    depth16 = np.clip(np.round(depth * 256.0), 0, 65535).astype(np.uint16)
    Image.fromarray(depth16).save(stem_path + "_depth.png")
    np.save(stem_path + "_depth.npy", depth.astype(np.float32))


def colour_disparity(disp: np.ndarray, color_range: tuple[float, float] | None) -> np.ndarray:
    """uint8 [H, W, 3] of disparity [H, W] in `color_range`, or in the map's own when None."""
    from jdepth.colormap import colorize

    vmin, vmax = color_range if color_range else (None, None)
    return colorize(disp, vmin, vmax)


def write_outputs(stem_path: str, depth: np.ndarray, disp: np.ndarray,
                  color_range: tuple[float, float] | None = None) -> None:
    """NAME_depth.png (uint16, depth*256), NAME_depth.npy, NAME_disp.png (colour, in
    `color_range` of disparity, or the image's own range when None)."""
    write_depth(stem_path, depth)
    Image.fromarray(colour_disparity(disp, color_range)).save(stem_path + "_disp.png")


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


class Progress:
    """tqdm on a terminal; elsewhere (logs, CI) a plain line every `every` items, since tqdm's
    carriage-return redraws would pile up into one unreadable line there."""

    def __init__(self, total: int | None, desc: str, every: int, unit: str = "frames"):
        from tqdm import tqdm

        # disable=None: tqdm switches itself off when stderr is not a terminal.
        self.bar = tqdm(total=total, desc=desc, unit=unit[:-1], dynamic_ncols=True, disable=None)
        self.total, self.desc, self.every, self.unit = total, desc, every, unit
        self.done, self.shown, self.start = 0, 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.bar.update(n)
        before, self.done = self.done, self.done + n
        if self.every and (self.done // self.every > before // self.every
                           or self.done == self.total):
            self._line()

    def _line(self) -> None:
        if self.bar.disable:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            of = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: {self.done}{of} {self.unit} ({rate:.2f}/s)", flush=True)
            self.shown = self.done

    def write(self, line: str) -> None:
        """Prints a line without breaking the bar."""
        if self.bar.disable:
            print(line, flush=True)
        else:
            self.bar.write(line)

    def close(self) -> None:
        if self.every and self.done != self.shown:  # a video whose length was unknown
            self._line()
        self.bar.close()


class Predictor:
    """The model with this call's options: batches of frames in, outputs per frame out.

    Attributes:
      multi_frame: the recipe matches each frame against frame t-1 (ManyDepth).
    """

    def __init__(self, model, args):
        self.model, self.args = model, args
        offsets = tuple(getattr(model, "lookup_offsets", ()))
        if offsets not in ((), (-1,)):
            raise ValueError(f"lookup frames {offsets}: tools/predict.py feeds frame t-1 only")
        self.multi_frame = bool(offsets)
        self.absolute = bool(getattr(model, "absolute", False))

    def k_norm(self, height: int, width: int) -> np.ndarray:
        """[4, 4] normalised intrinsics of an input of this native size."""
        from jdepth.data import calibration
        from jdepth.pointcloud import intrinsics_matrix

        if self.args.intrinsics is None:
            return np.array(calibration.MONODEPTH2_NORMALISED_INTRINSICS)
        fx, fy, cx, cy = self.args.intrinsics
        return intrinsics_matrix(fx / width, fy / height, cx / width, cy / height)

    def disparity(self, frames: list[np.ndarray], lookups: list[np.ndarray]) -> np.ndarray:
        """float32 [N, h, w] at the network resolution of uint8 [H, W, 3] frames; `lookups`
        (frame t-1 of each) are used by multi-frame recipes only."""
        batch = self.args.batch_size
        if not self.multi_frame:
            return self.model.predict_disparity(frames, batch_size=batch)
        from jdepth.data import calibration

        K = np.stack([calibration.scale_intrinsics(self.k_norm(*f.shape[:2]), self.model.width,
                                                   self.model.height) for f in frames])
        return self.model.predict_disparity(frames, batch_size=batch, lookup=lookups, K=K)

    def output_disparity(self, disp: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The network's disparity [h, w] at the output resolution."""
        return disp if self.args.native_size else to_size(disp, *size)

    def write_frame(self, stem_path: str, disp: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """Depth PNG/NPY (and the PLY) of one frame from its network disparity; returns the
        depth [H, W] at the output resolution."""
        depth = self.args.scale / self.output_disparity(disp, frame.shape[:2])
        write_depth(stem_path, depth)
        if self.args.ply:
            self.write_ply(stem_path + "_points.ply", depth, frame)
        return depth

    def write_ply(self, path: str, depth: np.ndarray, frame: np.ndarray) -> None:
        from jdepth import pointcloud
        from jdepth.data import calibration, pipeline

        height, width = depth.shape
        colours = pipeline.resize_image(frame, height, width)
        K = calibration.scale_intrinsics(self.k_norm(*frame.shape[:2]), width, height)
        points, colors = pointcloud.point_cloud(depth, colours, K, self.args.ply_stride)
        if self.absolute:
            kind = "metric (scale-aware recipe: metres)"
        else:
            kind = "relative: up to scale (monocular training; median-scale it to metres)"
        source = ("--intrinsics" if self.args.intrinsics else
                  "Monodepth2's KITTI default 0.58 W, 1.92 H, W/2, H/2")
        comments = [
            f"depth {kind}",
            f"depth multiplied by --scale {self.args.scale:g}",
            "camera frame: x right, y down, z forward",
            (f"intrinsics fx {K[0, 0]:.6g} fy {K[1, 1]:.6g} cx {K[0, 2]:.6g} "
             f"cy {K[1, 2]:.6g} at {width}x{height} ({source})"),
            f"every {self.args.ply_stride}th pixel of every {self.args.ply_stride}th row",
            "jdepth tools/predict.py",
        ]
        pointcloud.write_ply(path, points, colors, comments)


def predict_images(predictor: Predictor, images, predecessors: dict[str, str]):
    """Phase 1 for images: depth files (and PLYs) written, disparities kept for the colour range.

    Returns:
      (done, failures): [((path, stem), (H, W), network disparity [h, w])] and
      [(path, kitti.DataError)].
    """
    args = predictor.args
    done, failures = [], []
    if not images:
        return done, failures
    previous = None  # (path, frame) of the last readable image
    bar = Progress(len(images), "images", args.progress_every, unit="images")
    for start in range(0, len(images), args.batch_size):
        loaded, failed = load_images(images[start : start + args.batch_size])
        for path, error in failed:
            print(f"skipped: {error}", file=sys.stderr, flush=True)
        failures.extend(failed)
        if loaded:
            frames, lookups = [], []
            for path, _, frame in loaded:
                has_previous = previous is not None and predecessors.get(path) == previous[0]
                frames.append(frame)
                lookups.append(previous[1] if has_previous else frame)
                previous = (path, frame)
            for (path, stem, frame), disp in zip(loaded, predictor.disparity(frames, lookups)):
                depth = predictor.write_frame(os.path.join(args.output_dir, stem), disp, frame)
                flat = depth.max() < FLAT_RATIO * depth.min()
                bar.write(f"{path}: {depth.shape[1]}x{depth.shape[0]}, depth min "
                          f"{depth.min():.3f} median {np.median(depth):.3f} max {depth.max():.3f}"
                          + (" (FLAT: the prediction is one depth everywhere)" if flat else ""))
                done.append(((path, stem), frame.shape[:2], disp))
        bar.update(len(loaded) + len(failed))
    bar.close()
    return done, failures





def predict_video(av, predictor: Predictor, path: str, stem: str) -> dict:
    """Phase 1 for a video: per-frame depth files (and PLYs) from batches of decoded frames.

    Returns:
      {"frames": count written, "size": (H, W) of the outputs, "rate": frame rate,
       "samples": float32 [M] network disparities sampled for the colour range, "error": the
       kitti.DataError that stopped decoding, or None}.
    """
    from jdepth.data import kitti

    args = predictor.args
    base = os.path.join(args.output_dir, stem)
    try:
        total, rate = video_info(av, path)
    except kitti.DataError as exc:
        return {"frames": 0, "size": None, "rate": None, "error": exc, "samples": None}
    count, samples, size, error = 0, [], None, None
    bar = Progress(total, stem, args.progress_every)
    depth_min, depth_max, flat = np.inf, -np.inf, 0
    previous = None  # the last frame of the previous batch: frame t-1 of the next one's first

    def flush(frames):
        nonlocal count, previous, size, depth_min, depth_max, flat
        lookups = ([previous if previous is not None else frames[0]] + frames[:-1])
        for frame, disp in zip(frames, predictor.disparity(frames, lookups)):
            depth = predictor.write_frame(f"{base}_{count:06d}", disp, frame)
            step = max(1, disp.size // RANGE_SAMPLES_PER_FRAME)
            samples.append(disp.ravel()[step // 2 :: step])
            size = depth.shape
            depth_min, depth_max = min(depth_min, depth.min()), max(depth_max, depth.max())
            flat += bool(depth.max() < FLAT_RATIO * depth.min())
            count += 1
        previous = frames[-1]
        bar.update(len(frames))

    chunk, frames = [], decode_video(av, path)
    while True:
        try:
            chunk.append(next(frames))
        except StopIteration:
            break
        except kitti.DataError as exc:  # the frames decoded before it are still predicted
            error = exc
            break
        if len(chunk) == args.batch_size:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    bar.close()
    if count:
        print(f"{path}: {count} frames {size[1]}x{size[0]}, depth min {depth_min:.3f} max "
              f"{depth_max:.3f}" + (f" ({flat} FLAT frames: one depth everywhere)" if flat else ""))
    return {"frames": count, "size": size, "rate": rate, "error": error,
            "samples": np.concatenate(samples) if samples else np.zeros(0, np.float32)}


def open_video_writer(av, path: str, width: int, height: int, rate):
    """(container, stream) of an MP4 with the first encoder of VIDEO_CODECS this PyAV has."""
    for codec in VIDEO_CODECS:
        try:
            av.codec.Codec(codec, "w")
        except ValueError:  # UnknownCodecError: this FFmpeg build cannot encode it
            continue
        container = av.open(path, "w")
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Near-transparent quality: the defaults smear the colour map's fine depth steps.
        if codec == "h264":
            stream.options = {"crf": "18"}
        else:
            stream.codec_context.qscale = 3  # mpeg4 ignores crf; its -q:v, 2 (best) to 31
        return container, stream
    raise RuntimeError(f"PyAV has none of the encoders {VIDEO_CODECS}")


def write_video_outputs(av, predictor: Predictor, path: str, stem: str, video: dict,
                        color_range) -> None:
    """Phase 2 for a video: NAME_%06d_disp.png and NAME_depth.mp4 (input | disparity).

    Decodes the video again and reads the depths back from the .npy files, so no phase holds
    more than a batch of frames.
    """
    from jdepth.data import pipeline

    args = predictor.args
    base = os.path.join(args.output_dir, stem)
    height, width = video["size"]
    container, stream = open_video_writer(av, f"{base}_depth.mp4", 2 * width,
                                          height + height % 2, video["rate"])
    with container:
        for index, frame in zip(range(video["frames"]), decode_video(av, path)):
            disp = args.scale / np.load(f"{base}_{index:06d}_depth.npy")
            colour = colour_disparity(disp, color_range)
            Image.fromarray(colour).save(f"{base}_{index:06d}_disp.png")
            side = np.concatenate([pipeline.resize_image(frame, height, width), colour], axis=1)
            if height % 2:
                side = np.concatenate([side, side[-1:]], axis=0)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(side, format="rgb24")))
        container.mux(stream.encode())
    print(f"{path}: {video['frames']} frames -> {base}_depth.mp4 ({stream.codec_context.name})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device != "auto":
        # Must be set before JAX initialises its backends (first jdepth import below).
        os.environ["JAX_PLATFORMS"] = args.device.replace("gpu", "cuda")
    images, videos = find_inputs(args.inputs)
    av = import_av() if videos else None  # before minutes of model loading, not after
    import jax

    from jdepth.inference import DepthPredictor

    model = DepthPredictor.from_workdir(args.workdir, args.step)
    predictor = Predictor(model, args)
    what = [f"{len(images)} images"] * bool(images) + [f"{len(videos)} videos"] * bool(videos)
    print(f"model {args.workdir} ({model.width}x{model.height}"
          + (", multi-frame: frame t-1 as lookup" if predictor.multi_frame else "")
          + f") on {jax.devices()[0].platform}; {' and '.join(what)} -> {args.output_dir}")
    if args.intrinsics is None and (args.ply or predictor.multi_frame):
        print("intrinsics: Monodepth2's KITTI default (fx = 0.58 W, fy = 1.92 H, centred); pass "
              "--intrinsics fx,fy,cx,cy for another camera")

    done, failures = predict_images(predictor, images, frame_predecessors(args.inputs))
    processed = []
    for path, stem in videos:
        video = predict_video(av, predictor, path, stem)
        if video["error"] is not None:
            print(f"skipped: {video['error']}" + (f" (after {video['frames']} frames, which "
                  "were written)" if video["frames"] else ""), file=sys.stderr, flush=True)
            failures.append((path, video["error"]))
        if video["frames"]:
            processed.append((path, stem, video))

    color_range = None
    if args.color_range == "global" and (done or processed):
        every = np.concatenate([d.ravel() for _, _, d in done]
                               + [video["samples"] for _, _, video in processed])
        color_range = (float(np.percentile(every, 2)), float(np.percentile(every, 98)))
    for (path, stem), size, disp in done:
        disp = predictor.output_disparity(disp, size)
        Image.fromarray(colour_disparity(disp, color_range)).save(
            os.path.join(args.output_dir, stem) + "_disp.png")
    for path, stem, video in processed:
        write_video_outputs(av, predictor, path, stem, video, color_range)
    if color_range:
        print(f"colour range (disparity, all images): {color_range[0]:.4g} to "
              f"{color_range[1]:.4g}, i.e. depth {args.scale / color_range[1]:.3g} to "
              f"{args.scale / color_range[0]:.3g}")
    if failures:
        total = len(images) + len(videos)
        print(f"{len(failures)} of {total} inputs could not be read (listed above as "
              "'skipped'); the others were written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
