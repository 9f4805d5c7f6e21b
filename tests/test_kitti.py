"""KITTI raw readers: split files, calibration, paths, loaders, velodyne projection, GT export."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jdepth.data import kitti

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "data", "kitti_tiny")
DATE = "2011_09_26"
DRIVE = "2011_09_26/2011_09_26_drive_0023_sync"
TINY_REF = kitti.FrameRef(DRIVE, 0, "l")


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "export_gt_depth", os.path.join(REPO, "tools", "export_gt_depth.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


# ------------------------------------------------------------------------------------ split files


def test_read_split_file_formats(tmp_path):
    split = tmp_path / "split.txt"
    split.write_text(
        "2011_09_26/2011_09_26_drive_0022_sync 473 r\n"
        "\n"
        "# a comment\n"
        "2011_09_26/2011_09_26_drive_0002_sync 0000000069 l\n"
        "2011_09_29/2011_09_29_drive_0026_sync 1 2\n"
        "2011_09_26/2011_09_26_drive_0023_sync/image_03/data/0000000004.png "
        "2011_09_26/2011_09_26_drive_0023_sync/image_02/data/0000000004.png\n"
    )
    refs = kitti.read_split_file(str(split))
    assert refs == [
        kitti.FrameRef("2011_09_26/2011_09_26_drive_0022_sync", 473, "r"),
        kitti.FrameRef("2011_09_26/2011_09_26_drive_0002_sync", 69, "l"),
        kitti.FrameRef("2011_09_29/2011_09_29_drive_0026_sync", 1, "l"),
        kitti.FrameRef("2011_09_26/2011_09_26_drive_0023_sync", 4, "r"),
    ]
    assert [r.camera for r in refs] == [3, 2, 2, 3]
    assert refs[0].date == "2011_09_26"
    assert kitti.side_map == {"2": 2, "3": 3, "l": 2, "r": 3}


@pytest.mark.parametrize(
    "bad_line", ["2011_09_26/x_sync 12", "2011_09_26/x_sync twelve l", "2011_09_26/x_sync 1 q"]
)
def test_read_split_file_bad_line_names_file_and_line(tmp_path, bad_line):
    split = tmp_path / "bad_split.txt"
    split.write_text(f"2011_09_26/x_sync 3 l\n{bad_line}\n")
    with pytest.raises(kitti.DataError) as info:
        kitti.read_split_file(str(split))
    assert f"{split}:2:" in str(info.value)


def test_read_split_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        kitti.read_split_file(str(tmp_path / "nope.txt"))


def test_frame_ref_rejects_unknown_side():
    with pytest.raises(ValueError, match="unknown side"):
        kitti.FrameRef("a/b", 0, "x")


# ------------------------------------------------------------------------------------ calibration


def test_read_calib_file_real_kitti():
    calib = kitti.read_calib_file(os.path.join(TINY, DATE, "calib_cam_to_cam.txt"))
    assert "calib_time" not in calib  # non-numeric value skipped
    assert calib["corner_dist"].tolist() == [0.0995]
    assert calib["P_rect_02"].shape == (12,)
    assert calib["S_rect_02"].tolist() == [1242.0, 375.0]
    velo = kitti.read_calib_file(os.path.join(TINY, DATE, "calib_velo_to_cam.txt"))
    assert set(velo) == {"R", "T", "delta_f", "delta_c"}


def test_load_camera_calibration_real_kitti():
    calib = kitti.load_camera_calibration(os.path.join(TINY, DATE), 2)
    assert calib.image_size == (1242, 375)
    assert calib.P_rect[0, 0] == pytest.approx(721.5377)
    assert calib.P_rect[1, 1] == pytest.approx(721.5377)
    assert calib.P_rect[0, 2] == pytest.approx(609.5593)
    assert calib.P_rect[1, 2] == pytest.approx(172.854)
    assert calib.P_rect[0, 3] == pytest.approx(44.85728)
    np.testing.assert_allclose(
        calib.velo_to_cam[:3, :3],
        [[7.533745e-03, -9.999714e-01, -6.166020e-04],
         [1.480249e-02, 7.280733e-04, -9.998902e-01],
         [9.998621e-01, 7.523790e-03, 1.480755e-02]],
    )
    np.testing.assert_allclose(
        calib.velo_to_cam[:3, 3], [-4.069766e-03, -7.631618e-02, -2.717806e-01]
    )
    np.testing.assert_array_equal(calib.velo_to_cam[3], [0, 0, 0, 1])
    assert calib.R_rect_00[0, 1] == pytest.approx(9.837760e-03)
    assert calib.R_rect_00[3, 3] == 1.0 and calib.R_rect_00.shape == (4, 4)
    right = kitti.load_camera_calibration(os.path.join(TINY, DATE), 3)
    assert right.P_rect[0, 3] == pytest.approx(-339.5242)


def test_normalised_and_scaled_intrinsics():
    calib = kitti.load_camera_calibration(os.path.join(TINY, DATE), 2)
    k_norm = kitti.normalised_intrinsics(calib)
    expected = np.array([
        [721.5377 / 1242, 0, 609.5593 / 1242, 0],
        [0, 721.5377 / 375, 172.854 / 375, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
    ])
    np.testing.assert_allclose(k_norm, expected, rtol=1e-12)
    k_full = kitti.scale_intrinsics(k_norm, 1242, 375)
    fx, cx, cy = k_full[0, 0], k_full[0, 2], k_full[1, 2]
    assert (fx, cx, cy) == pytest.approx((721.5377, 609.5593, 172.854))
    k_small = kitti.scale_intrinsics(k_norm, 640, 192)
    assert k_small[0, 0] == pytest.approx(721.5377 * 640 / 1242)
    assert k_small[1, 1] == pytest.approx(721.5377 * 192 / 375)
    assert k_small[1, 2] == pytest.approx(172.854 * 192 / 375)
    np.testing.assert_array_equal(k_small[2:], expected[2:])


def _copy_calib(dst_date_dir: str) -> None:
    os.makedirs(dst_date_dir, exist_ok=True)
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        shutil.copy(os.path.join(TINY, DATE, name), dst_date_dir)


def test_calibration_errors_name_file_and_key(tmp_path):
    date_dir = str(tmp_path / DATE)
    _copy_calib(date_dir)
    cam_file = os.path.join(date_dir, "calib_cam_to_cam.txt")
    with open(cam_file) as f:
        lines = [line for line in f if not line.startswith("P_rect_02")]
    with open(cam_file, "w") as f:
        f.writelines(lines)
    with pytest.raises(kitti.DataError) as info:
        kitti.load_camera_calibration(date_dir, 2)
    assert cam_file in str(info.value) and "P_rect_02" in str(info.value)
    kitti.load_camera_calibration(date_dir, 3)  # camera 3 is still complete

    os.remove(os.path.join(date_dir, "calib_velo_to_cam.txt"))
    with pytest.raises(FileNotFoundError, match="calib_velo_to_cam.txt"):
        kitti.load_camera_calibration(date_dir, 3)

    bad = tmp_path / "bad_calib.txt"
    bad.write_text("P_rect_02: 1 2 3\nno colon here\n")
    with pytest.raises(kitti.DataError, match=f"{bad}:2"):
        kitti.read_calib_file(str(bad))


# ------------------------------------------------------------------------------------------ paths


def test_paths(tmp_path):
    ref = kitti.FrameRef("2011_09_26/2011_09_26_drive_0022_sync", 473, "r")
    drive = os.path.join("/data", ref.folder)
    assert kitti.calib_dir("/data", ref) == "/data/2011_09_26"
    assert kitti.image_path("/data", ref, ext="jpg") == f"{drive}/image_03/data/0000000473.jpg"
    assert kitti.image_path("/data", ref, 1, ext=".png") == f"{drive}/image_03/data/0000000474.png"
    assert kitti.image_path("/data", ref, ext="png", frame_index=5).endswith("0000000005.png")
    assert kitti.velodyne_path("/data", ref, -1) == f"{drive}/velodyne_points/data/0000000472.bin"
    assert kitti.oxts_path("/data", ref) == f"{drive}/oxts/data/0000000473.txt"
    assert kitti.panoptic_path("/data", ref) == f"{drive}/panoptic_03/data/0000000473.png"
    assert kitti.benchmark_gt_path("/data", ref) == (
        f"{drive}/proj_depth/groundtruth/image_03/0000000473.png"
    )


def test_image_path_auto_detects_extension(tmp_path):
    root = str(tmp_path)
    ref = kitti.FrameRef("d/d_sync", 7, "l")
    tiny = np.zeros((2, 2, 3), np.uint8)
    _write_png(kitti.image_path(root, ref, ext="png"), tiny)
    Image.fromarray(tiny).save(kitti.image_path(root, ref, 1, ext="jpg"))
    assert kitti.image_path(root, ref).endswith("0000000007.png")
    assert kitti.image_path(root, ref, 1).endswith("0000000008.jpg")
    with pytest.raises(FileNotFoundError) as info:  # a split line pointing nowhere
        kitti.image_path(root, ref, 2)
    message = str(info.value)
    assert os.path.join(root, "d/d_sync/image_02/data/0000000009.png") in message
    assert os.path.join(root, "d/d_sync/image_02/data/0000000009.jpg") in message
    assert isinstance(info.value, kitti.DataError)


def test_neighbour_index_boundary_rule(tmp_path):
    root = str(tmp_path)
    for index in (3, 4, 5):
        _write_png(
            kitti.image_path(root, kitti.FrameRef("d/d_sync", index, "l"), ext="png"),
            np.zeros((2, 2, 3), np.uint8),
        )
    first, last = kitti.FrameRef("d/d_sync", 3, "l"), kitti.FrameRef("d/d_sync", 5, "l")
    assert kitti.neighbour_index(root, first, 1) == 4
    with pytest.raises(FileNotFoundError) as info:
        kitti.neighbour_index(root, first, -1)
    assert "0000000002.png" in str(info.value) and "sequence boundary" in str(info.value)
    assert kitti.neighbour_index(root, first, -1, on_missing="clamp") == 3
    assert kitti.neighbour_index(root, last, 1, on_missing="clamp") == 5
    assert kitti.neighbour_index(root, last, 3, on_missing="clamp") == 5
    assert kitti.neighbour_index(root, first, 4, on_missing="clamp") == 5  # nearest toward 3
    with pytest.raises(FileNotFoundError, match="0000000009"):
        kitti.neighbour_index(root, kitti.FrameRef("d/d_sync", 9, "l"), 0, on_missing="clamp")
    with pytest.raises(FileNotFoundError):
        kitti.neighbour_index(root, first, 1, ext="jpg")
    with pytest.raises(ValueError, match="on_missing"):
        kitti.neighbour_index(root, first, 1, on_missing="wrap")


# ---------------------------------------------------------------------------------------- loaders


def test_load_image_real_png():
    image = kitti.load_image(kitti.image_path(TINY, TINY_REF))
    assert image.shape == (375, 1242, 3) and image.dtype == np.uint8
    assert 20 < image.mean() < 235 and image.std() > 10  # a real photograph, not a blank frame


def test_load_image_truncated_png_and_jpeg(tmp_path):
    source = kitti.image_path(TINY, TINY_REF)
    with open(source, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(kitti.DataError) as info:
        kitti.load_image(str(truncated))
    assert str(truncated) in str(info.value)

    jpeg = tmp_path / "frame.jpg"
    Image.fromarray(kitti.load_image(source)[:64, :64]).save(jpeg, quality=90)
    jpeg_bytes = jpeg.read_bytes()
    assert kitti.load_image(str(jpeg)).shape == (64, 64, 3)
    jpeg.write_bytes(jpeg_bytes[: len(jpeg_bytes) // 2])
    with pytest.raises(kitti.DataError, match="frame.jpg"):
        kitti.load_image(str(jpeg))

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(kitti.DataError, match="garbage.png"):
        kitti.load_image(str(garbage))


def test_load_image_missing_and_mode_conversion(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(kitti.DataError, match="missing.png"):
        kitti.load_image(str(missing))
    with pytest.raises(FileNotFoundError):
        kitti.load_image(str(missing))
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgb = kitti.load_image(str(tmp_path / "gray.png"))
    assert rgb.shape == (3, 4, 3)
    np.testing.assert_array_equal(rgb[..., 1], gray)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(kitti.load_image(str(tmp_path / "rgba.png"))[..., 0], 200)


def test_load_velodyne_points(tmp_path):
    points = np.arange(24, dtype=np.float32).reshape(6, 4)
    path = tmp_path / "scan.bin"
    points.tofile(path)
    np.testing.assert_array_equal(kitti.load_velodyne_points(str(path)), points)
    path.write_bytes(points.tobytes()[:-3])
    with pytest.raises(kitti.DataError, match="scan.bin.*93 bytes"):
        kitti.load_velodyne_points(str(path))
    with pytest.raises(FileNotFoundError, match="other.bin"):
        kitti.load_velodyne_points(str(tmp_path / "other.bin"))


def test_read_oxts_real_record(tmp_path):
    oxts = kitti.read_oxts(kitti.oxts_path(TINY, TINY_REF))
    assert len(oxts) == 30 and list(oxts) == list(kitti.OXTS_FIELDS)
    assert oxts["lat"] == pytest.approx(49.032806841152)
    assert oxts["lon"] == pytest.approx(8.4385595703734)
    assert oxts["yaw"] == pytest.approx(2.9196693267949)
    assert oxts["vf"] == pytest.approx(8.7424908583432)
    assert oxts["vl"] == pytest.approx(0.076390461431484)
    assert oxts["vu"] == pytest.approx(-0.10478895840789)
    assert oxts["orimode"] == 0.0 and oxts["numsats"] == 6.0
    short = tmp_path / "short.txt"
    short.write_text(" ".join(["1.0"] * 29))
    with pytest.raises(kitti.DataError, match="short.txt.*29 values"):
        kitti.read_oxts(str(short))


def test_load_panoptic_uint16_and_rgb(tmp_path):
    ids = np.array([[26001, 26002], [7, 11]], dtype=np.uint16)
    Image.fromarray(ids).save(tmp_path / "ids16.png")
    labels = kitti.load_panoptic(str(tmp_path / "ids16.png"))
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, ids)
    wide = np.array([[26001, 7, 70000]], dtype=np.int64)  # 70000 needs the blue channel
    rgb = np.stack([wide % 256, (wide // 256) % 256, wide // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "ids_rgb.png")
    np.testing.assert_array_equal(kitti.load_panoptic(str(tmp_path / "ids_rgb.png")), wide)
    Image.fromarray(np.zeros((2, 2, 4), np.uint8)).save(tmp_path / "rgba.png")
    with pytest.raises(kitti.DataError, match="rgba.png.*RGBA"):
        kitti.load_panoptic(str(tmp_path / "rgba.png"))


def test_load_benchmark_depth(tmp_path):
    depth = np.array([[0.0, 1.5], [80.25, 12.0]])
    Image.fromarray((depth * 256).astype(np.uint16)).save(tmp_path / "gt.png")
    loaded = kitti.load_benchmark_depth(str(tmp_path / "gt.png"))
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, depth)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "gt8.png")
    with pytest.raises(kitti.DataError, match="gt8.png.*16-bit"):
        kitti.load_benchmark_depth(str(tmp_path / "gt8.png"))


# --------------------------------------------------------------------------- ground-truth export


def _two_frame_tree(root, rng) -> list[kitti.FrameRef]:
    _copy_calib(os.path.join(root, DATE))
    refs = [kitti.FrameRef(DRIVE, 0, "l"), kitti.FrameRef(DRIVE, 1, "l")]
    for ref in refs:
        n = 5000
        scan = np.stack(
            [rng.uniform(-20, 60, n), rng.uniform(-15, 15, n), rng.uniform(-2, 1, n),
             rng.uniform(0, 1, n)], axis=1,
        ).astype(np.float32)
        path = kitti.velodyne_path(root, ref)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        scan.tofile(path)
    return refs


def test_export_tool_round_trip(tmp_path):
    root = str(tmp_path / "kitti")
    refs = _two_frame_tree(root, np.random.default_rng(0))
    split = tmp_path / "test_files.txt"
    split.write_text("".join(f"{r.folder} {r.frame_index} {r.side}\n" for r in refs[::-1]))
    output = tmp_path / "out" / "gt_depths.npz"
    tool = _load_tool()
    args = ["--data_root", root, "--split_file", str(split), "--output", str(output)]
    assert tool.main(args) == 0

    with np.load(output, allow_pickle=True) as f:
        # Monodepth2's `data` layout, plus the split's fingerprint and the maps' sizes.
        assert f.files[0] == "data" and f["data"].dtype == object
        assert str(f["split_fingerprint"]) == kitti.split_fingerprint(refs[::-1])
        assert f["image_sizes"].tolist() == [[375, 1242]] * 2
    depths = kitti.load_gt_depths(str(output))
    assert len(depths) == 2
    for depth, ref in zip(depths, refs[::-1]):  # split order
        expected = kitti.generate_depth_map(
            os.path.join(root, DATE), kitti.velodyne_path(root, ref), 2, vel_depth=True
        )
        assert depth.dtype == np.float32 and depth.shape == (375, 1242)
        np.testing.assert_array_equal(depth, expected)
        assert np.count_nonzero(depth) > 500
    assert not np.array_equal(depths[0], depths[1])


def test_export_eigen_benchmark_and_missing_scan(tmp_path):
    root = str(tmp_path)
    refs = [kitti.FrameRef(DRIVE, 0, "l"), kitti.FrameRef(DRIVE, 1, "r")]
    maps = [np.array([[0.0, 5.5]]), np.array([[81.0], [2.25]])]  # ragged sizes
    for ref, depth in zip(refs, maps):
        _write_png(kitti.benchmark_gt_path(root, ref), (depth * 256).astype(np.uint16))
    depths = kitti.export_gt_depths(root, refs, kind="eigen_benchmark")
    kitti.save_gt_depths(str(tmp_path / "bench.npz"), depths)
    loaded = kitti.load_gt_depths(str(tmp_path / "bench.npz"))
    assert [d.shape for d in loaded] == [(1, 2), (2, 1)]
    for got, want in zip(loaded, maps):
        np.testing.assert_array_equal(got, want)

    _copy_calib(os.path.join(root, DATE))
    with pytest.raises(FileNotFoundError) as info:
        kitti.export_gt_depths(root, refs, kind="eigen")
    assert kitti.velodyne_path(root, refs[0]) in str(info.value)
    with pytest.raises(ValueError, match="unknown ground-truth kind"):
        kitti.export_gt_depths(root, refs, kind="nyu")


def test_load_gt_depths_reference_layouts(tmp_path):
    stacked = np.ones((2, 3, 4), np.float32)  # the reference's file when all sizes are equal
    np.savez_compressed(tmp_path / "stacked.npz", data=stacked)
    assert [d.shape for d in kitti.load_gt_depths(str(tmp_path / "stacked.npz"))] == [(3, 4)] * 2
    np.savez_compressed(tmp_path / "wrong.npz", depths=stacked)
    with pytest.raises(kitti.DataError, match="wrong.npz.*'data'"):
        kitti.load_gt_depths(str(tmp_path / "wrong.npz"))


def test_export_tool_cli(tmp_path):
    root = str(tmp_path / "kitti")
    refs = _two_frame_tree(root, np.random.default_rng(1))
    split = tmp_path / "split.txt"
    split.write_text(f"{refs[0].folder} 0 l\n")
    output = tmp_path / "gt.npz"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "export_gt_depth.py"), "--data_root", root,
         "--split_file", str(split), "--output", str(output), "--split_kind", "eigen"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 1 eigen" in result.stdout
    assert len(kitti.load_gt_depths(str(output))) == 1

