"""The one-time "prepare" of your own sequences: a KITTI-layout tree the KITTI pipeline reads.

Why a KITTI-layout tree: the grain pipeline, its augmentations, the validation pass, the
evaluation and the average-depth baseline all read that layout; writing the user's frames into
it means none of them needs a second code path (DESIGN.md: no source-specific paths). Why decode
once: decoding a video at every step costs a seek and a decode of every frame since the last
keyframe per sample; the prepared frames are PNGs (lossless, so the video's compression stays the
only loss) that the pipeline reads and caches exactly like KITTI's.

Layout under `cache_dir`:
  frames_<key>/          one video's decoded frames: data/%010d.png (every `stride`-th frame),
                         thumbs.npy (uint8 [N, h, 64] grey thumbnails for the static test) and
                         info.json (written last: the completion marker). The key hashes the
                         video's path, size and modification time and the stride, so an edited
                         video is decoded again and a changed split setting decodes nothing.
  sequences_<key>/       the prepared tree, keyed by every source file's size and mtime and every
                         setting:
      <name>/calib_cam_to_cam.txt, calib_velo_to_cam.txt   camera 02 = the given intrinsics at
                                                           the native size; no LiDAR (identity)
      <name>/frames/image_02/data/%010d.png|jpg            links to the frames (copies where
                                                           links fail)
      <name>/frames/oxts/data/%010d.txt                    with a speed CSV: vf = its speed,
                                                           every other field NaN (unknown)
      <name>/frames/proj_depth/groundtruth/image_02/%010d.png   with known depth
      splits/{train,val,test}_files.txt                    `<name>/frames <index> l`
      sequences.json                                       what was prepared (written last)
Frame indices in the tree count the kept frames: source frame = index * stride.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable

import numpy as np
from PIL import Image

from jdepth.data import calibration, kitti, sequences, video
from jdepth.data.calibration import DataError
from jdepth.data.validate import Problem, ValidationError

DRIVE = "frames"  # the drive folder of every sequence: `<name>/frames`
SUMMARY = "sequences.json"
_FORMAT = 1  # bump when the tree layout changes: old trees are then prepared again


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a prepared tree depends on besides the source files (config.data.sequences)."""

    path: str
    intrinsics: str | None = None  # shared 'fx,fy,cx,cy' or file; sidecars take precedence
    offsets: tuple[int, ...] = (0, -1, 1)  # config.data.frame_ids
    stride: int = 1
    static_threshold: float = 1.0
    holdout: str = "auto"
    val_fraction: float = 0.1
    test_fraction: float = 0.1


def _signature(path: str | None):
    """(size, mtime_ns) of a file; of every file for a folder; None when absent."""
    if path is None or not os.path.exists(path):
        return None
    if os.path.isdir(path):
        return sorted((name, _signature(os.path.join(path, name)))
                      for name in os.listdir(path))
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _key(payload) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _link(src: str, dst: str) -> None:
    """A symlink to `src` (absolute), or a copy where the filesystem refuses links."""
    try:
        os.symlink(os.path.abspath(src), dst)
    except OSError:
        shutil.copyfile(src, dst)


def _save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(array).save(path, compress_level=1)  # decoded once, read many times


# -------------------------------------------------------------------------------------- frames


def decode_video_frames(source: sequences.Source, stride: int, cache_dir: str) -> dict:
    """Decodes a video once into `cache_dir/frames_<key>` (module docstring).

    Returns:
      info: {"dir": the folder of %010d.png frames, "count", "width", "height", "fps", "thumbs"
      (uint8 [N, h, w])}.

    Raises:
      DataError: naming the video, when it cannot be opened or decoded or its frame size changes.
    """
    key = _key({"video": os.path.abspath(source.path), "sig": _signature(source.path),
                "stride": stride, "format": _FORMAT})
    folder = os.path.join(cache_dir, f"frames_{key}")
    info_path = os.path.join(folder, "info.json")
    if not os.path.exists(info_path):
        av = video.import_av()
        tmp = folder + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "data"))
        _, fps = video.video_info(av, source.path)
        thumbs, size, kept = [], None, 0
        print(f"decoding {source.path} into {folder} (once) ...", flush=True)
        for index, frame in enumerate(video.decode_video(av, source.path)):
            if index % stride:
                continue
            if size is None:
                size = frame.shape[:2]
            elif frame.shape[:2] != size:
                raise DataError(f"{source.path}: frame {index} is {frame.shape[1]}x"
                                f"{frame.shape[0]}, the first was {size[1]}x{size[0]}")
            _save_png(frame, os.path.join(tmp, "data", f"{kept:010d}.png"))
            thumbs.append(sequences.thumbnail(frame))
            kept += 1
        if not kept:
            raise DataError(f"{source.path}: the video holds no decodable frame")
        np.save(os.path.join(tmp, "thumbs.npy"), np.stack(thumbs))
        with open(os.path.join(tmp, "info.json"), "w") as f:
            json.dump({"count": kept, "width": size[1], "height": size[0], "fps": float(fps),
                       "stride": stride, "source": os.path.abspath(source.path)}, f, indent=1)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    with open(info_path) as f:
        info = json.load(f)
    info["dir"] = os.path.join(folder, "data")
    info["thumbs"] = np.load(os.path.join(folder, "thumbs.npy"))
    return info


def folder_frames(source: sequences.Source, stride: int) -> dict:
    """A frame folder's every `stride`-th image (natural order), decoded once for thumbnails.

    Returns:
      info: {"paths": the kept frames, "count", "width", "height", "fps": None, "thumbs"}.

    Raises:
      DataError: naming the frame that is unreadable or of another size than the first.
    """
    names = sorted((n for n in os.listdir(source.path)
                    if n.lower().endswith(video.IMAGE_EXTENSIONS)), key=video.natural_key)
    paths = [os.path.join(source.path, n) for n in names][::stride]
    thumbs, size = [], None
    for path in paths:
        frame = kitti.load_image(path)  # DataError naming the file when unreadable
        if size is None:
            size = frame.shape[:2]
        elif frame.shape[:2] != size:
            raise DataError(f"{path}: {frame.shape[1]}x{frame.shape[0]}, the sequence's first "
                            f"frame {paths[0]} is {size[1]}x{size[0]}")
        thumbs.append(sequences.thumbnail(frame))
    if not paths:
        raise DataError(f"{source.path}: no frames")
    return {"paths": paths, "count": len(paths), "width": size[1], "height": size[0],
            "fps": None, "thumbs": np.stack(thumbs)}


# ------------------------------------------------------------------------------------- writing


def _values(values) -> str:
    return " ".join(repr(float(v)) for v in np.ravel(values))


def write_calibration(date_dir: str, k_norm: np.ndarray, width: int, height: int) -> None:
    """calib_cam_to_cam.txt (camera 02: P_rect_02, S_rect_02, R_rect_00) and an identity
    calib_velo_to_cam.txt (kitti.load_camera_calibration reads both; there is no LiDAR)."""
    k = calibration.scale_intrinsics(k_norm, width, height)
    p_rect = np.hstack([k[:3, :3], np.zeros((3, 1))])
    with open(os.path.join(date_dir, calibration.CAM_TO_CAM_FILE), "w") as f:
        f.write(f"S_rect_02: {_values((width, height))}\nR_rect_00: {_values(np.eye(3))}\n"
                f"P_rect_02: {_values(p_rect)}\n")
    with open(os.path.join(date_dir, calibration.VELO_TO_CAM_FILE), "w") as f:
        f.write(f"R: {_values(np.eye(3))}\nT: {_values(np.zeros(3))}\n")


def _oxts_line(speed: float) -> str:
    values = [float("nan")] * len(kitti.OXTS_FIELDS)
    values[kitti.OXTS_FIELDS.index("vf")] = speed
    return " ".join(repr(v) for v in values) + "\n"


def _write_sequence(root: str, source: sequences.Source, frames: dict, k_norm: np.ndarray,
                    speeds: dict[int, float] | None, stride: int) -> None:
    date_dir = os.path.join(root, source.name)
    drive = os.path.join(date_dir, DRIVE)
    image_dir = os.path.join(drive, "image_02", "data")
    os.makedirs(image_dir)
    write_calibration(date_dir, k_norm, frames["width"], frames["height"])
    for i in range(frames["count"]):
        if "paths" in frames:
            src = frames["paths"][i]
            ext = "png" if src.lower().endswith(".png") else "jpg"
        else:
            src, ext = os.path.join(frames["dir"], f"{i:010d}.png"), "png"
        _link(src, os.path.join(image_dir, f"{i:010d}.{ext}"))
    if speeds is not None:
        oxts_dir = os.path.join(drive, "oxts", "data")
        os.makedirs(oxts_dir)
        for i in range(frames["count"]):
            with open(os.path.join(oxts_dir, f"{i:010d}.txt"), "w") as f:
                f.write(_oxts_line(speeds[i * stride]))
    if source.depth is not None:
        depth_dir = os.path.join(drive, "proj_depth", "groundtruth", "image_02")
        os.makedirs(depth_dir)
        for i in range(frames["count"]):
            _link(os.path.join(source.depth, f"{i * stride:06d}.png"),
                  os.path.join(depth_dir, f"{i:010d}.png"))


def _write_splits(root: str, names: list[str], plan: sequences.SplitPlan) -> dict[str, int]:
    os.makedirs(os.path.join(root, "splits"))
    counts = {}
    for split in ("train", "val", "test"):
        frames = getattr(plan, split)
        with open(os.path.join(root, "splits", f"{split}_files.txt"), "w") as f:
            f.writelines(f"{names[s]}/{DRIVE} {t} l\n" for s, t in frames)
        counts[split] = len(frames)
    return counts


# ------------------------------------------------------------------------------------- prepare


def _problem(path: str, exc: Exception) -> Problem:
    """A Problem from an error whose message may already start with the file it is about
    (`FILE: ...` or `FILE:LINE: ...`); else at `path`."""
    text = str(exc)
    where, _, what = text.partition(": ")
    if what and (where.startswith(path) or os.path.exists(where.split(":")[0])):
        return Problem(where, what)
    return Problem(path, text)


def _check_sidecars(source, frames, stride, shared_intrinsics) -> tuple[list[Problem], dict]:
    """Intrinsics, speed and depth of one sequence: (problems, parsed values)."""
    problems, parsed = [], {"k_norm": None, "speeds": None}
    spec = source.intrinsics or shared_intrinsics
    if spec is None:
        problems.append(Problem(source.path, f"no intrinsics: neither "
                                f"{sequences.sidecar_stem(source.path)}{sequences.INTRINSICS_SUFFIX} "
                                "nor config.data.sequences.intrinsics ('fx,fy,cx,cy' in pixels "
                                "of the native size, or a calibration file)"))
    else:
        try:
            parsed["k_norm"] = sequences.read_intrinsics(spec, frames["width"], frames["height"])
        except DataError as exc:
            problems.append(Problem(source.path, f"intrinsics unusable: {exc}"))
    wanted = [i * stride for i in range(frames["count"])]
    if source.speed is not None:
        try:
            speeds = sequences.read_speed_csv(source.speed)
            missing = [i for i in wanted if i not in speeds]
            if missing:
                problems.append(Problem(source.speed, f"no speed for {len(missing)} of the "
                                        f"{len(wanted)} frames used, first frame {missing[0]}"))
            parsed["speeds"] = speeds
        except DataError as exc:
            problems.append(_problem(source.speed, exc))
    if source.depth is not None:
        present = set(os.listdir(source.depth))
        missing = [i for i in wanted if f"{i:06d}.png" not in present]
        if missing:
            problems.append(Problem(source.depth, f"known depth missing for {len(missing)} of "
                                    f"{len(wanted)} frames, first {missing[0]:06d}.png"))
    return problems, parsed


def tree_root(settings: Settings, cache_dir: str) -> str:
    """Where the tree of `settings` and the current source files lives (prepared or not)."""
    sources = sequences.find_sources(settings.path)
    payload = {"settings": dataclasses.asdict(settings), "format": _FORMAT,
               "sources": [(os.path.abspath(s.path), s.kind, _signature(s.path),
                            _signature(s.intrinsics), _signature(s.speed), _signature(s.depth))
                           for s in sources]}
    if settings.intrinsics and os.path.isfile(settings.intrinsics):
        payload["shared"] = _signature(settings.intrinsics)
    return os.path.join(cache_dir, f"sequences_{_key(payload)}")


def is_prepared(settings: Settings, cache_dir: str) -> bool:
    try:
        return os.path.exists(os.path.join(tree_root(settings, cache_dir), SUMMARY))
    except DataError:
        return False


def read_summary(root: str) -> dict | None:
    """The sequences.json of a prepared tree, or None for a KITTI root."""
    path = os.path.join(root, SUMMARY)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def prepare(settings: Settings, cache_dir: str,
            say: Callable[[str], None] = lambda m: print(m, flush=True)) -> str:
    """Prepares (once) the KITTI-layout tree of `settings`; returns its root.

    Raises:
      ValidationError: listing every problem of every sequence (unreadable video or frame,
        missing or unusable intrinsics, bad speed CSV, missing depth, a sequence too short),
        each naming the file.
      ImportError: a video without PyAV installed (names the extra to install).
    """
    where = "while preparing config.data.sequences"
    try:
        sources = sequences.find_sources(settings.path)
        root = tree_root(settings, cache_dir)
    except DataError as exc:
        raise ValidationError([Problem("config.data.sequences.path", str(exc))], where) from exc
    if os.path.exists(os.path.join(root, SUMMARY)):
        report(read_summary(root), root, say)
        return root
    problems, frames, parsed = [], [], []
    for source in sources:
        try:
            info = (decode_video_frames(source, settings.stride, cache_dir)
                    if source.kind == "video" else folder_frames(source, settings.stride))
        except DataError as exc:
            problems.append(_problem(source.path, exc))
            continue
        found, values = _check_sidecars(source, info, settings.stride, settings.intrinsics)
        problems += found
        frames.append(info)
        parsed.append(values)
    if problems:
        raise ValidationError(problems, where)
    names = [s.name for s in sources]
    try:
        static = [sequences.static_targets(f["thumbs"], settings.offsets,
                                           settings.static_threshold) for f in frames]
        plan = sequences.plan_splits(
            [f["count"] for f in frames], static, settings.offsets, settings.holdout,
            settings.val_fraction, settings.test_fraction,
            names=[s.path for s in sources])
    except DataError as exc:
        raise ValidationError([_problem(settings.path, exc)], where) from exc
    tmp = root + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for source, info, values in zip(sources, frames, parsed):
        _write_sequence(tmp, source, info, values["k_norm"], values["speeds"], settings.stride)
    counts = _write_splits(tmp, names, plan)
    summary = {
        "settings": dataclasses.asdict(settings), "holdout": plan.holdout, "splits": counts,
        "sequences": [{
            "name": s.name, "source": os.path.abspath(s.path), "kind": s.kind,
            "frames": f["count"], "width": f["width"], "height": f["height"], "fps": f["fps"],
            "static_skipped": skipped, "speed": s.speed is not None,
            "depth": s.depth is not None,
            "intrinsics": s.intrinsics or settings.intrinsics,
        } for s, f, skipped in zip(sources, frames, plan.skipped_static)],
    }
    with open(os.path.join(tmp, SUMMARY), "w") as f:
        json.dump(summary, f, indent=1)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    report(summary, root, say)
    return root


def report(summary: dict, root: str, say: Callable[[str], None]) -> None:
    """One line per sequence (frames, static targets skipped) and one for the splits."""
    threshold = summary["settings"]["static_threshold"]
    for s in summary["sequences"]:
        rate = f", {s['fps']:.4g} fps" if s["fps"] else ""
        say(f"  {s['source']}: {s['frames']} frames {s['width']}x{s['height']}{rate}; "
            f"{s['static_skipped']} static training target(s) skipped (thumbnail mean absolute "
            f"difference < {threshold:g})")
    skipped = sum(s["static_skipped"] for s in summary["sequences"])
    splits = summary["splits"]
    say(f"  prepared {root}: train {splits['train']}, val {splits['val']}, test {splits['test']} "
        f"frames ({summary['holdout']} held out); {skipped} static target(s) skipped in all")


def has_depth(summary: dict) -> bool:
    """Whether every sequence came with known depth (evaluation then scores against it)."""
    return all(s["depth"] for s in summary["sequences"])
