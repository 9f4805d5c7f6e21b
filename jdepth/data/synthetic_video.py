"""The synthetic drives as plain videos with sidecars: the "your own video" path with known depth.

`write_videos(kitti_root, out_dir)` turns each drive of a synthetic KITTI tree
(jdepth/data/synthetic.py) into what a user would bring (jdepth/data/sequences.py):

  drive_NNNN.mp4             image_02 frames in order at the drive's 10 Hz
  drive_NNNN.intrinsics.txt  `fx fy cx cy` in pixels of the frames (P_rect_02 of the calibration)
  drive_NNNN.speed.csv       `frame,speed_mps`: the oxts forward speed of every frame
  drive_NNNN.depth/%06d.png  the exact depth (uint16 depth * 256, 0 = sky), for evaluation

Codecs: 'h264' (libx264, yuv420p, crf 18: what a camera or phone writes; the frames come back
close to, not equal to, the PNGs) or 'lossless' (libx264rgb at qp 0: decodes to exactly the
PNGs, so a test can compare the two data paths value for value).
"""

from __future__ import annotations

import os
import shutil

from jdepth.data import calibration, kitti, synthetic_scene, video

CODECS = ("h264", "lossless")


def _drive_folders(kitti_root: str) -> list[str]:
    """`<date>/<drive>` of every drive with image_02 frames, in order."""
    found = []
    for date in sorted(os.listdir(kitti_root)):
        date_dir = os.path.join(kitti_root, date)
        if not os.path.isdir(date_dir):
            continue
        for drive in sorted(os.listdir(date_dir)):
            if os.path.isdir(os.path.join(date_dir, drive, "image_02", "data")):
                found.append(f"{date}/{drive}")
    return found


def _open_writer(av, path: str, width: int, height: int, codec: str):
    container = av.open(path, "w")
    rate = round(1.0 / synthetic_scene.FRAME_INTERVAL)
    if codec == "lossless":
        stream = container.add_stream("libx264rgb", rate=rate)
        stream.pix_fmt, stream.options = "rgb24", {"qp": "0"}
    else:
        stream = container.add_stream("libx264", rate=rate)
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "18"}
    stream.width, stream.height = width, height
    return container, stream


def write_videos(kitti_root: str, out_dir: str, codec: str = "h264", speed: bool = True,
                 depth: bool = True) -> list[str]:
    """Writes every drive of `kitti_root` as a video plus sidecars (module docstring).

    Args:
      kitti_root: a synthetic KITTI tree (or any KITTI raw tree with oxts and dense depth).
      out_dir: created if needed.
      codec: 'h264' or 'lossless'.
      speed, depth: write the speed CSV / the depth folder.

    Returns:
      The video paths, in drive order.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    av = video.import_av()
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for folder in _drive_folders(kitti_root):
        ref = kitti.FrameRef(folder, 0, "l")
        stem = os.path.join(out_dir, folder.split("/")[1].replace("_sync", "").split("_", 3)[-1])
        frame_dir = os.path.join(kitti_root, folder, "image_02", "data")
        indices = sorted(int(n.split(".")[0]) for n in os.listdir(frame_dir))
        frames = [kitti.load_image(kitti.image_path(kitti_root, ref, frame_index=i))
                  for i in indices]
        height, width = frames[0].shape[:2]
        container, stream = _open_writer(av, stem + ".mp4", width, height, codec)
        with container:
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        calib = kitti.load_camera_calibration(kitti.calib_dir(kitti_root, ref), 2)
        p = calib.P_rect
        with open(stem + ".intrinsics.txt", "w") as f:
            f.write(" ".join(repr(float(v)) for v in (p[0, 0], p[1, 1], p[0, 2], p[1, 2]))
                    + "\n")
        if speed:
            with open(stem + ".speed.csv", "w") as f:
                f.write("frame,speed_mps\n")
                for j, i in enumerate(indices):
                    vf = kitti.read_oxts(kitti.oxts_path(kitti_root, ref, frame_index=i))["vf"]
                    f.write(f"{j},{vf!r}\n")
        if depth:
            depth_dir = stem + ".depth"
            os.makedirs(depth_dir, exist_ok=True)
            for j, i in enumerate(indices):
                shutil.copyfile(kitti.benchmark_gt_path(kitti_root, ref, frame_index=i),
                                os.path.join(depth_dir, f"{j:06d}.png"))
        written.append(stem + ".mp4")
    if not written:
        raise calibration.DataError(f"{kitti_root}: no drive with image_02 frames")
    return written
