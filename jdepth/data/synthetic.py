"""Synthetic KITTI raw dataset: writes rendered drives in the exact KITTI raw layout.

Per drive `<root>/<date>/<date>_drive_<NNNN>_sync/`:
  image_02/data/%010d.png (RGB), image_02/timestamps.txt, image_02/poses.txt (camera-to-world 3x4
  row-major per frame, world = first camera), velodyne_points/data/%010d.bin (float32 x, y, z,
  reflectance in the velodyne frame), oxts/data/%010d.txt (30 fields),
  oxts/{timestamps,dataformat}.txt, panoptic_02/data/%010d.png (uint16 Cityscapes panoptic ids),
  proj_depth/groundtruth/image_02/%010d.png (exact camera-z depth * 256 as uint16, 0 = sky, as
  KITTI's improved ground truth) and synthetic_meta.json (true poses of the camera and of every
  visible car).
Per date folder: calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt. Per root:
splits/{train,val,test}_files.txt (`<date>/<drive> <frame> l`, drives disjoint between splits, first
and last frame of every drive left out so that t-1 and t+1 exist) and synthetic_config.json, written
last as a completion marker.

Calibration: cameras 00 and 02 coincide (P_rect_02 has a zero baseline column), cameras 01 and 03
sit 0.54 m to the right; only image_02 is rendered. R_rect_00 and all R_0x are the identity and
there is no lens distortion. See `synthetic_drive` for intrinsics and the lidar mounting.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import numpy as np
from PIL import Image

from jdepth.data import synthetic_drive as sd
from jdepth.data import synthetic_scene as sc
from jdepth.data.synthetic_drive import SyntheticDrive, build_drive

__all__ = ["SyntheticDrive", "build_drive", "make_dataset", "drive_folder", "DATE"]

DATE = "2030_01_01"
_CALIB_TIME = "calib_time: 01-Jan-2030 12:00:00\n"
# oxts/dataformat.txt: field name and meaning, in record order (vf, index 8, is the speed).
_OXTS_FIELDS = """lat latitude (deg)|lon longitude (deg)|alt altitude (m)|roll roll angle (rad)
pitch pitch angle (rad)|yaw heading (rad), 0 = east, positive = counter clockwise
vn velocity towards north (m/s)|ve velocity towards east (m/s)|vf forward velocity (m/s)
vl leftward velocity (m/s)|vu upward velocity (m/s)|ax acceleration in x, forward (m/s^2)
ay acceleration in y, left (m/s^2)|az acceleration in z, up (m/s^2)|af forward acceleration (m/s^2)
al leftward acceleration (m/s^2)|au upward acceleration (m/s^2)|wx angular rate around x (rad/s)
wy angular rate around y (rad/s)|wz angular rate around z (rad/s)
wf angular rate around forward axis (rad/s)|wl angular rate around leftward axis (rad/s)
wu angular rate around upward axis (rad/s)|pos_accuracy position accuracy (north/east in m)
vel_accuracy velocity accuracy (north/east in m/s)|navstat navigation status
numsats number of satellites tracked|posmode position mode of primary GPS receiver
velmode velocity mode of primary GPS receiver|orimode orientation mode of primary GPS receiver"""
_EARTH_RADIUS, _LAT0, _LON0, _ALT0 = 6378137.0, 49.0, 8.4, 115.0


def drive_folder(date: str, number: int) -> str:
    """`<date>/<date>_drive_<NNNN>_sync`, the folder part of a split line."""
    return f"{date}/{date}_drive_{number:04d}_sync"


def _values(values) -> str:
    return " ".join(f"{float(x) + 0.0:e}" for x in np.ravel(values))  # + 0.0: no "-0"


def write_calibration(date_dir: str, K: np.ndarray, width: int, height: int) -> None:
    """The three calibration files of a date folder, in the official text format."""
    fx = K[0, 0]
    lines = [_CALIB_TIME, "corner_dist: 9.950000e-02\n"]
    for cam in range(4):
        baseline = 0.54 if cam in (1, 3) else 0.0  # metres to the right of camera 0
        p_rect = np.hstack([K, [[-fx * baseline], [0.0], [0.0]]])
        for key, value in (("S", (width, height)), ("K", K), ("D", np.zeros(5)), ("R", np.eye(3)),
                           ("T", (-baseline, 0.0, 0.0)), ("S_rect", (width, height)),
                           ("R_rect", np.eye(3)), ("P_rect", p_rect)):
            lines.append(f"{key}_0{cam}: {_values(value)}\n")
    with open(os.path.join(date_dir, "calib_cam_to_cam.txt"), "w") as f:
        f.writelines(lines)
    with open(os.path.join(date_dir, "calib_velo_to_cam.txt"), "w") as f:
        f.writelines([_CALIB_TIME, f"R: {_values(sd.VELO_TO_CAM_R)}\n",
                      f"T: {_values(sd.VELO_TO_CAM_T)}\n", f"delta_f: {_values((0, 0))}\n",
                      f"delta_c: {_values((0, 0))}\n"])
    with open(os.path.join(date_dir, "calib_imu_to_velo.txt"), "w") as f:
        f.writelines([_CALIB_TIME, f"R: {_values(np.eye(3))}\n",
                      f"T: {_values((-0.81, 0.32, -0.8))}\n"])


def _oxts_line(drive: SyntheticDrive, frame: int) -> str:
    """30 oxts fields from the true ego motion (vf = forward speed in m/s, index 8)."""
    s = drive.ego_state(frame)
    yaw = drive.heading0 - s["yaw"]  # the scene's heading turns right, oxts yaw turns left
    c, n = np.cos(drive.heading0), np.sin(drive.heading0)
    east, north = s["z"] * c + s["x"] * n, s["z"] * n - s["x"] * c
    lat = _LAT0 + np.degrees(north / _EARTH_RADIUS)
    lon = _LON0 + np.degrees(east / (_EARTH_RADIUS * np.cos(np.radians(_LAT0))))
    v, a, left = s["speed"], s["accel"], -s["lateral_accel"]
    floats = [lat, lon, _ALT0, 0.0, 0.0, yaw, v * np.sin(yaw), v * np.cos(yaw), v, 0.0, 0.0,
              a, left, 9.81, a, left, 9.81, 0.0, 0.0, -s["yaw_rate"], 0.0, 0.0, -s["yaw_rate"],
              0.05, 0.02]
    return " ".join(f"{x:.12g}" for x in floats) + " 4 10 5 5 0\n"


def _timestamps(drive_number: int, frames: int) -> str:
    start = (12 * 3600 + 10 * 60 * drive_number) * 10**9  # nanoseconds since midnight
    lines = []
    for frame in range(frames):
        ns = start + frame * int(sc.FRAME_INTERVAL * 1e9)
        hours, rest = divmod(ns, 3600 * 10**9)
        minutes, rest = divmod(rest, 60 * 10**9)
        seconds, nanos = divmod(rest, 10**9)
        lines.append(f"2030-01-01 {hours:02d}:{minutes:02d}:{seconds:02d}.{nanos:09d}\n")
    return "".join(lines)


def _rows(matrix: np.ndarray) -> list:
    return [[round(float(x), 6) for x in row] for row in matrix[:3]]


def _save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def write_drive(root: str, date: str, drive_number: int, drive: SyntheticDrive) -> dict:
    """Renders and writes every frame of one drive (folder number `drive_number`).

    Returns:
      {"frames": F, "frames_with_moving_car": number of frames showing a moving car}.
    """
    base = os.path.join(root, drive_folder(date, drive_number))
    dirs = {name: os.path.join(base, *name.split("/")) for name in (
        "image_02/data", "velodyne_points/data", "oxts/data", "panoptic_02/data",
        "proj_depth/groundtruth/image_02")}
    for path in dirs.values():
        os.makedirs(path, exist_ok=True)
    scene, visible = drive.scene, {}
    poses = [drive.camera_to_world(f) for f in range(drive.frames)]
    moving_frames = 0
    for frame in range(drive.frames):
        name = f"{frame:010d}"
        out = drive.render(frame)
        _save_png(out["image"], os.path.join(dirs["image_02/data"], name + ".png"))
        _save_png(out["panoptic"], os.path.join(dirs["panoptic_02/data"], name + ".png"))
        depth = np.round(out["depth"].astype(np.float64) * 256).astype(np.uint16)
        _save_png(depth, os.path.join(dirs["proj_depth/groundtruth/image_02"], name + ".png"))
        drive.lidar_scan(frame).tofile(os.path.join(dirs["velodyne_points/data"], name + ".bin"))
        with open(os.path.join(dirs["oxts/data"], name + ".txt"), "w") as f:
            f.write(_oxts_line(drive, frame))
        ids = np.unique(out["panoptic"])
        instances = ids[ids // 1000 == sc.CLASS_CAR] % 1000
        visible[frame] = instances
        speeds = np.linalg.norm(scene.car_velocity[instances - 1], axis=1)
        moving_frames += bool(np.any(speeds > 0))
    stamps = _timestamps(drive_number, drive.frames)
    for folder in ("image_02", "velodyne_points", "oxts"):
        with open(os.path.join(base, folder, "timestamps.txt"), "w") as f:
            f.write(stamps)
    with open(os.path.join(base, "oxts", "dataformat.txt"), "w") as f:
        fields = _OXTS_FIELDS.replace("\n", "|").split("|")
        f.write("".join("{}: {}\n".format(*field.split(" ", 1)) for field in fields))
    with open(os.path.join(base, "image_02", "poses.txt"), "w") as f:
        f.writelines(" ".join(f"{x:.9e}" for x in p[:3].ravel()) + "\n" for p in poses)
    _write_meta(base, drive, poses, visible)
    return {"frames": drive.frames, "frames_with_moving_car": moving_frames}


def _write_meta(base: str, drive: SyntheticDrive, poses: list, visible: dict) -> None:
    scene = drive.scene
    car_poses = [drive.car_to_world(f) for f in range(drive.frames)]
    world_velocity = drive.car_velocity_world()
    cars = []
    for c, instance in enumerate(scene.car_instance):
        frames = [f for f in range(drive.frames) if instance in visible[f]]
        cars.append({
            "instance": int(instance), "panoptic_id": int(sc.CLASS_CAR * 1000 + instance),
            "moving": bool(np.linalg.norm(scene.car_velocity[c]) > 0),
            "speed": round(float(np.linalg.norm(scene.car_velocity[c])), 6),
            "size_whl": [round(float(x), 6) for x in scene.car_size[c]],
            "velocity_world": [round(float(x), 6) for x in world_velocity[c]],
            "visible_frames": frames,
            "car_to_world": [_rows(car_poses[f][c]) for f in frames]})
    meta = {
        "frame_interval": sc.FRAME_INTERVAL, "width": drive.width, "height": drive.height,
        "K": drive.K.tolist(), "camera_height": sc.CAMERA_HEIGHT,
        "note": "world = camera 2 of frame 0 (x right, y down, z forward); poses are 3x4 "
                "object-to-world rows; car frame: footprint centre on the road, z along heading",
        "camera_to_world": [[[float(x) for x in row] for row in p[:3]] for p in poses],
        "ego_speed": [drive.ego_state(f)["speed"] for f in range(drive.frames)],
        "cars": cars}
    with open(os.path.join(base, "synthetic_meta.json"), "w") as f:
        json.dump(meta, f, separators=(",", ":"))


def default_split_counts(drives: int) -> tuple[int, int, int]:
    """(train, val, test) drive counts: about 10% each for val and test (at least 1 if D >= 3)."""
    if drives >= 3:
        held_out = max(1, int(round(0.1 * drives)))
        return drives - 2 * held_out, held_out, held_out
    return (1, drives - 1, 0)


def _generate_drive(args: tuple) -> dict:
    root, date, seed, index, frames, width, height = args
    return write_drive(root, date, index + 1, build_drive(seed, index, frames, width, height))


def make_dataset(out_dir: str, seed: int = 0, drives: int = 3, frames: int = 50,
                 width: int = 640, height: int = 192,
                 split_counts: tuple[int, int, int] | None = None, date: str = DATE,
                 workers: int = 1) -> dict:
    """Generates the synthetic KITTI raw tree and its split files.

    Args:
      out_dir: dataset root (created if needed; existing files are overwritten).
      seed: scene seed; the output is byte-identical for equal arguments (except `workers`).
      drives: number of drives; drive i (0-based) is folder number i + 1.
      frames: frames per drive (>= 3, so that every split frame has t-1 and t+1).
      width, height: image size in pixels.
      split_counts: (train, val, test) drive counts summing to `drives`; default
        `default_split_counts(drives)`. Drives are assigned in order: train first, then val, test.
      date: the date folder name.
      workers: processes rendering drives in parallel (1 = in this process).

    Returns:
      dict with root, date, drives (folder names), split line counts, frames, seconds,
      frames_per_minute and frames_with_moving_car.
    """
    if drives < 1:
        raise ValueError(f"make_dataset: drives must be >= 1, got {drives}")
    if frames < 3:
        raise ValueError(f"make_dataset: frames must be >= 3 (t-1 and t+1 are needed), "
                         f"got {frames}")
    counts = tuple(split_counts) if split_counts is not None else default_split_counts(drives)
    if len(counts) != 3 or sum(counts) != drives or min(counts) < 0:
        raise ValueError(f"make_dataset: split_counts {counts} must be 3 non-negative numbers "
                         f"summing to drives={drives}")
    start = time.perf_counter()
    date_dir = os.path.join(out_dir, date)
    os.makedirs(date_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "splits"), exist_ok=True)
    write_calibration(date_dir, sd.kitti_intrinsics(width, height), width, height)
    jobs = [(out_dir, date, seed, i, frames, width, height) for i in range(drives)]
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_generate_drive, jobs))
    else:
        results = [_generate_drive(job) for job in jobs]
    folders = [drive_folder(date, i + 1) for i in range(drives)]
    bounds = np.cumsum((0,) + counts)
    lines = {}
    for split, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
        text = "".join(f"{folder} {f} l\n"
                       for folder in folders[lo:hi] for f in range(1, frames - 1))
        with open(os.path.join(out_dir, "splits", f"{split}_files.txt"), "w") as f:
            f.write(text)
        lines[split] = text.count("\n")
    config = dict(seed=seed, drives=drives, frames=frames, width=width, height=height,
                  split_counts=list(counts), date=date)
    with open(os.path.join(out_dir, "synthetic_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    seconds = time.perf_counter() - start
    return dict(root=out_dir, date=date, drives=folders, splits=lines, frames=drives * frames,
                seconds=seconds, frames_per_minute=60.0 * drives * frames / max(seconds, 1e-9),
                frames_with_moving_car=sum(r["frames_with_moving_car"] for r in results))
