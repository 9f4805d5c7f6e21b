"""Packed (tfds array_record) KITTI tuples: records, errors, batch equality with the file tree."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from jdepth.data import kitti, pipeline, tfds_kitti

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DATE = os.path.join(REPO, "tests", "data", "kitti_tiny", "2011_09_26")
DRIVE_A = "2011_09_26/2011_09_26_drive_0001_sync"  # 6 PNG frames, oxts, panoptic labels
DRIVE_B = "2011_09_26/2011_09_26_drive_0002_sync"  # 5 JPEG frames (one grayscale), nothing else
NATIVE_H, NATIVE_W = 20, 48  # stored size; training size below differs so resizing is exercised


def _velocity(frame: int) -> float:
    return 10.0 + 0.25 * frame


def _write_tree(root: str) -> None:
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "2011_09_26"))
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        shutil.copy(os.path.join(TINY_DATE, name), os.path.join(root, "2011_09_26", name))
    for sub in ("image_02/data", "oxts/data", "panoptic_02/data"):
        os.makedirs(os.path.join(root, DRIVE_A, sub))
    for frame in range(6):
        image = rng.integers(0, 256, (NATIVE_H, NATIVE_W, 3), dtype=np.uint8)
        image_file = os.path.join(root, DRIVE_A, "image_02/data", f"{frame:010d}.png")
        Image.fromarray(image).save(image_file)
        oxts = np.zeros(30)
        oxts[8] = _velocity(frame)
        with open(os.path.join(root, DRIVE_A, "oxts/data", f"{frame:010d}.txt"), "w") as f:
            f.write(" ".join(f"{v:.6f}" for v in oxts) + "\n")
        labels = rng.choice([7, 11, 26001, 26002], size=(NATIVE_H, NATIVE_W)).astype(np.uint16)
        Image.fromarray(labels).save(
            os.path.join(root, DRIVE_A, "panoptic_02/data", f"{frame:010d}.png")
        )
    os.makedirs(os.path.join(root, DRIVE_B, "image_02/data"))
    for frame in range(5):
        image = Image.fromarray(rng.integers(0, 256, (NATIVE_H, NATIVE_W, 3), dtype=np.uint8))
        if frame == 3:
            image = image.convert("L")
        image.save(os.path.join(root, DRIVE_B, "image_02/data", f"{frame:010d}.jpg"), quality=90)


def _write_split(path: str, lines: list[str]) -> str:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A tiny tree, its split files and a tfds data dir holding splits 'a' and 'mixed'."""
    base = tmp_path_factory.mktemp("tfds_kitti")
    root, data_dir = str(base / "kitti"), str(base / "tfds")
    _write_tree(root)
    splits = {
        "a": [f"{DRIVE_A} {i} l" for i in range(1, 5)],
        "mixed": ([f"{DRIVE_A} {i} l" for i in range(1, 5)]
                  + [f"{DRIVE_B} {i} l" for i in (3, 1, 2)]),
    }
    files = {name: _write_split(str(base / f"{name}.txt"), lines) for name, lines in splits.items()}
    for name, split_file in files.items():
        tfds_kitti.prepare(root, split_file, data_dir, split_name=name)
    return {"root": root, "data_dir": data_dir, "splits": files, "base": base}


def _assert_same_batches(file_ds, packed_ds, count):
    for i in range(count):
        a, b = file_ds[i], packed_ds[i]
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"batch {i} key {key}")


def test_config_name():
    assert tfds_kitti.config_name("train", (0, -1, 1)) == "train-frames_0_m1_p1"
    assert tfds_kitti.config_name("val_2", [0, -2, -1, 3]) == "val_2-frames_0_m2_m1_p3"
    with pytest.raises(ValueError, match="split name"):
        tfds_kitti.config_name("train/x", (0, -1, 1))
    with pytest.raises(ValueError, match="reserved"):
        tfds_kitti.config_name("all", (0, -1, 1))
    with pytest.raises(ValueError, match="target frame 0"):
        tfds_kitti.config_name("train", (-1, 0, 1))


def test_records_hold_encoded_files_ids_intrinsics_and_velocity(packed):
    root = packed["root"]
    source = tfds_kitti.load_source(packed["data_dir"], "mixed")
    assert len(source) == 7
    first = source[0]  # DRIVE_A frame 1
    assert first["index"] == 0 and first["folder"] == DRIVE_A.encode() and first["side"] == b"l"
    assert first["frame_index"] == 1
    np.testing.assert_array_equal(first["frame_indices"], [1, 0, 2])
    for data, frame in zip(first["images"], (1, 0, 2)):
        with open(os.path.join(root, DRIVE_A, "image_02/data", f"{frame:010d}.png"), "rb") as f:
            assert data == f.read()  # byte for byte, not re-encoded
    np.testing.assert_array_equal(first["velocity"], np.float32([10.25, 10.0, 10.5]))
    assert first["k_norm"].dtype == np.float64
    expected_k = kitti.normalised_intrinsics(
        kitti.load_camera_calibration(os.path.join(root, "2011_09_26"), 2)
    )
    np.testing.assert_array_equal(first["k_norm"], expected_k)  # exact: stored as float64 bytes
    jpeg = source[4]  # DRIVE_B frame 3, split order kept (no tfds shuffling)
    assert jpeg["index"] == 4 and jpeg["folder"] == DRIVE_B.encode() and jpeg["frame_index"] == 3
    assert jpeg["images"][0][:2] == b"\xff\xd8"  # JPEG magic: kept as JPEG
    assert np.isnan(jpeg["velocity"]).all() and list(jpeg["panoptic"]) == [b"", b"", b""]
    restored = pickle.loads(pickle.dumps(source))  # what grain's spawned workers receive
    assert restored[4]["images"][1] == jpeg["images"][1]


def test_train_batches_equal_file_tree(packed):
    cfg = pipeline.PipelineConfig(root=packed["root"], height=16, width=32)
    file_ds = pipeline.make_dataset(cfg, packed["splits"]["mixed"], batch_size=3, seed=7)
    packed_ds = tfds_kitti.make_tfds_dataset(
        cfg, packed["data_dir"], "mixed", batch_size=3, seed=7
    )
    _assert_same_batches(file_ds, packed_ds, 6)  # 18 samples: crosses two epoch boundaries
    flips = np.concatenate([packed_ds[i]["flipped"] for i in range(6)])
    assert flips.any() and not flips.all()  # the random draws were really exercised
    assert packed_ds[0]["images"].shape == (3, 3, 16, 32, 3)
    other_seed = tfds_kitti.make_tfds_dataset(
        cfg, packed["data_dir"], "mixed", batch_size=3, seed=8
    )
    assert not all(np.array_equal(other_seed[i]["index"], packed_ds[i]["index"]) for i in range(3))


def test_eval_batches_equal_file_tree_in_split_order(packed):
    cfg = pipeline.PipelineConfig(root=packed["root"], height=16, width=32)
    file_ds = pipeline.make_dataset(
        cfg, packed["splits"]["mixed"], batch_size=3, seed=0, train=False
    )
    packed_ds = tfds_kitti.make_tfds_dataset(
        cfg, packed["data_dir"], "mixed", batch_size=3, seed=0, train=False
    )
    assert len(packed_ds) == len(file_ds) == 3
    _assert_same_batches(file_ds, packed_ds, 3)
    np.testing.assert_array_equal(packed_ds[2]["index"], [6])  # last partial batch kept
    assert not packed_ds[0]["flipped"].any() and not packed_ds[0]["jitter"].any()


def test_velocity_and_panoptic_equal_file_tree(packed):
    cfg = pipeline.PipelineConfig(
        root=packed["root"], height=10, width=24, load_velocity=True, load_panoptic=True
    )
    file_ds = pipeline.make_dataset(cfg, packed["splits"]["a"], batch_size=2, seed=3)
    packed_ds = tfds_kitti.make_tfds_dataset(cfg, packed["data_dir"], "a", batch_size=2, seed=3)
    _assert_same_batches(file_ds, packed_ds, 4)
    batch = packed_ds[0]
    assert batch["panoptic"].shape == (2, 3, 10, 24)
    assert set(np.unique(batch["panoptic"])) <= {7, 11, 26001, 26002}
    expected = [[_velocity(i), _velocity(i - 1), _velocity(i + 1)] for i in batch["index"] + 1]
    np.testing.assert_allclose(batch["velocity"], expected, rtol=1e-6)


def test_missing_velocity_is_an_error(packed):
    cfg = pipeline.PipelineConfig(root=packed["root"], height=16, width=32, load_velocity=True)
    ds = tfds_kitti.make_tfds_dataset(
        cfg, packed["data_dir"], "mixed", batch_size=1, seed=0, train=False
    )
    assert ds[0]["velocity"].shape == (1, 3)
    with pytest.raises(kitti.DataError, match="drive_0002_sync frame 3 .*without oxts"):
        ds[4]


def test_not_prepared_names_directory_and_command(packed):
    with pytest.raises(kitti.MissingFileError, match="val-frames_0_m1_p1.*--name val"):
        tfds_kitti.load_source(packed["data_dir"], "val")
    with pytest.raises(kitti.MissingFileError, match="frame_ids"):
        tfds_kitti.load_source(packed["data_dir"], "mixed", frame_ids=(0, -1))


def test_cli_clamp_at_sequence_boundaries(packed, capsys):
    split = _write_split(str(packed["base"] / "edge.txt"), [f"{DRIVE_A} 0 l", f"{DRIVE_A} 5 l"])
    data_dir = str(packed["base"] / "tfds_edge")
    with pytest.raises(kitti.MissingFileError, match="0000000006.png.*sequence boundary"):
        tfds_kitti.pack_frame_tuple(packed["root"], kitti.FrameRef(DRIVE_A, 5, "l"), 0,
                                    (0, -1, 1), "raise")
    assert tfds_kitti.main([
        "--data_root", packed["root"], "--split_file", split, "--data_dir", data_dir,
        "--name", "edge", "--on_missing", "clamp",
    ]) == 0
    assert "split 'edge', 2 records" in capsys.readouterr().out
    source = tfds_kitti.load_source(data_dir, "edge", on_missing="clamp")
    np.testing.assert_array_equal(source[0]["frame_indices"], [0, 0, 1])
    np.testing.assert_array_equal(source[1]["frame_indices"], [5, 4, 5])
    with pytest.raises(ValueError, match="packed with on_missing='clamp'"):
        tfds_kitti.load_source(data_dir, "edge", on_missing="raise")


def test_corrupt_image_fails_while_packing(packed, tmp_path):
    root = str(tmp_path / "kitti")
    shutil.copytree(packed["root"], root)
    bad = os.path.join(root, DRIVE_A, "image_02/data", f"{2:010d}.png")
    with open(bad, "r+b") as f:
        f.truncate(60)
    with pytest.raises(kitti.DataError, match="0000000002.png: cannot decode image"):
        tfds_kitti.pack_frame_tuple(root, kitti.FrameRef(DRIVE_A, 1, "l"), 0, (0, -1, 1), "raise")
    checked: set[str] = set()
    tfds_kitti.pack_frame_tuple(packed["root"], kitti.FrameRef(DRIVE_A, 4, "l"), 0, (0, -1, 1),
                                "raise", checked)
    drive = os.path.join(packed["root"], DRIVE_A)
    assert checked == {os.path.join(drive, sub, f"{frame:010d}.png")
                       for sub in ("image_02/data", "panoptic_02/data") for frame in (3, 4, 5)}
    with pytest.raises(kitti.DataError, match="packed .* frame 9 .*cannot decode"):
        tfds_kitti.decode_image(b"not an image", "packed x frame 9 (l)")
