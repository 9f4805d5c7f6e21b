"""tools/predict.py beyond single images: videos, frame sequences for multi-frame recipes, coloured
point clouds (jdepth/pointcloud.py), and the error when the optional PyAV is missing.

The end-to-end video test runs the real Monodepth2 ResNet-18 networks at 64x64 with random weights
(test_interop's `_random_variables`, imported through tools/import_torch.py); the sequence test
uses a stand-in model that records what it is fed, since only the frame plumbing is under test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jax
import jax.numpy as jnp

from jdepth import pointcloud
from jdepth.data import calibration
from jdepth.interop import checkpoints, files
from jdepth.models.depth_decoder import DepthNet
from jdepth.models.pose_net import PoseNet

from conftest import REPO
from test_interop import EXTRAS, H, W, _random_variables, _tool

pytestmark = pytest.mark.usefixtures("fast_compiles")

NO_AV = "PyAV is not installed: pip install -e '.[video]' (or the test extra) to run video tests"


def _av():
    return pytest.importorskip("av", reason=NO_AV)


def _frames(count: int, height: int, width: int) -> np.ndarray:
    """uint8 [count, height, width, 3]: smooth ramps that move from frame to frame, so every frame
    differs and a lossy codec keeps them close."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.stack([4 * x + 9 * k, 6 * y + 5 * k, 3 * (x + y) + 20 * k], -1) % 256
                     for k in range(count)]).astype(np.uint8)


def _write_lossless_video(path, frames: np.ndarray, rate: int = 10) -> None:
    """An H.264 RGB video at qp 0: decodes to exactly `frames`."""
    av = _av()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.options = {"qp": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _decode(path) -> np.ndarray:
    av = _av()
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ------------------------------------------------------------------------------ point clouds
def _reproject(points, K):
    """Pixel coordinates (u, v) [N, 2] of camera-frame points [N, 3]."""
    return np.stack([K[0, 0] * points[:, 0] / points[:, 2] + K[0, 2],
                     K[1, 1] * points[:, 1] / points[:, 2] + K[1, 2]], axis=1)


@pytest.mark.parametrize("stride", [1, 3])
def test_ply_round_trip_reprojects_onto_the_pixel_centres(tmp_path, stride):
    height, width = 24, 36
    rng = np.random.default_rng(stride)
    y, x = np.mgrid[0:height, 0:width]
    depth = (2.0 + 0.2 * x + 0.1 * y + rng.uniform(0, 0.5, (height, width))).astype(np.float32)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    K = pointcloud.intrinsics_matrix(30.5, 28.0, 17.3, 11.2)

    points, colors = pointcloud.point_cloud(depth, image, K, stride)
    path = str(tmp_path / "cloud.ply")
    pointcloud.write_ply(path, points, colors, ["depth relative: up to scale", "second line"])
    with open(path, "rb") as f:
        raw = f.read()
    assert raw.startswith(b"ply\nformat binary_little_endian 1.0\ncomment depth relative")
    got_points, got_colors, comments = pointcloud.read_ply(path)

    assert len(got_points) == height * width // stride**2
    header_size = raw.index(b"end_header\n") + len(b"end_header\n")
    assert len(raw) == header_size + 15 * len(got_points)  # 3 float32 + 3 uchar, packed
    assert got_points.dtype == np.float32 and got_colors.dtype == np.uint8
    grid = np.stack([x, y], -1)[::stride, ::stride].reshape(-1, 2)
    np.testing.assert_allclose(_reproject(got_points.astype(np.float64), K), grid, atol=1e-4,
                               rtol=0)
    np.testing.assert_allclose(got_points[:, 2], depth[::stride, ::stride].ravel(), rtol=1e-6)
    np.testing.assert_array_equal(got_colors, image[::stride, ::stride].reshape(-1, 3))
    assert comments == ["depth relative: up to scale", "second line"]


class _Model:
    """Stand-in for DepthPredictor: records every call, predicts a disparity that identifies the
    frame (its mean colour), so outputs can be traced back to inputs."""

    def __init__(self, lookup_offsets=(), absolute=False, height=16, width=24):
        self.lookup_offsets, self.absolute = lookup_offsets, absolute
        self.height, self.width = height, width
        self.calls = []

    def predict_disparity(self, images, batch_size=8, *, lookup=None, K=None):
        self.calls.append({"images": list(images), "lookup": lookup, "K": K})
        return np.stack([np.full((self.height, self.width), 0.1 + im.mean() / 255, np.float32)
                         for im in images])


def _options(**overrides):
    args = vars(_tool("predict").parse_args(["x", "--workdir", "w", "--output_dir", "o"]))
    args.update(overrides)
    return argparse.Namespace(**args)


@pytest.mark.parametrize("absolute", [False, True])
def test_tool_ply_states_the_depth_kind_and_uses_the_given_intrinsics(tmp_path, absolute):
    predict = _tool("predict")
    height, width = 20, 30
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 9.0, (height, width)).astype(np.float32)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    fx, fy, cx, cy = 25.0, 24.0, 14.2, 9.7
    args = _options(ply=True, ply_stride=2, intrinsics=(fx, fy, cx, cy))
    predictor = predict.Predictor(_Model(absolute=absolute), args)
    path = str(tmp_path / "p.ply")
    predictor.write_ply(path, depth, image)

    points, colors, comments = pointcloud.read_ply(path)
    assert len(points) == height * width // 4
    kind = next(c for c in comments if c.startswith("depth "))
    if absolute:
        assert "metric" in kind and "relative" not in kind
    else:
        assert "relative: up to scale" in kind and "metric" not in kind
    y, x = np.mgrid[0:height:2, 0:width:2]
    K = pointcloud.intrinsics_matrix(fx, fy, cx, cy)
    np.testing.assert_allclose(_reproject(points.astype(np.float64), K),
                               np.stack([x, y], -1).reshape(-1, 2), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(colors, image[::2, ::2].reshape(-1, 3))


# ------------------------------------------------------------------ a video, end to end
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A Monodepth2 ResNet-18 workdir at 64x64 with random weights, via tools/import_torch.py."""
    image = jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
    depth = _random_variables(DepthNet(18), image, train=False, seed=0)
    pose = _random_variables(PoseNet(18), image, image, train=False, seed=1)
    folder = checkpoints.to_torch({"depth": depth["params"], "pose": pose["params"]},
                                  {"depth": depth["batch_stats"], "pose": pose["batch_stats"]},
                                  EXTRAS)
    root = tmp_path_factory.mktemp("md2")
    files.save_checkpoint_dir(str(root / "ref"), folder, ext=".npz")
    assert _tool("import_torch").main(["--torch_dir", str(root / "ref"), "--workdir",
                                       str(root / "run")]) == 0
    return str(root / "run")


def test_video_frames_match_the_images_and_the_side_by_side_decodes(workdir, tmp_path):
    count, height, width = 6, 32, 64
    frames = _frames(count, height, width)
    video = tmp_path / "drive.mp4"
    _write_lossless_video(video, frames)
    out = tmp_path / "out"
    predict = _tool("predict")
    assert predict.main([str(video), "--workdir", workdir, "--output_dir", str(out),
                         "--batch_size", "4", "--ply", "--ply_stride", "4"]) == 0

    depths = [np.load(out / f"drive_{k:06d}_depth.npy") for k in range(count)]
    assert all(d.shape == (height, width) and d.dtype == np.float32 for d in depths)
    assert not (out / f"drive_{count:06d}_depth.npy").exists()
    assert all((out / f"drive_{k:06d}_disp.png").exists() for k in range(count))
    cloud, _, comments = pointcloud.read_ply(str(out / "drive_000002_points.ply"))
    assert len(cloud) == height * width // 16
    assert any(c.startswith("depth relative: up to scale") for c in comments)
    np.testing.assert_allclose(cloud[:, 2], depths[2][::4, ::4].ravel(), rtol=1e-6)

    side = _decode(out / "drive_depth.mp4").astype(float)
    assert side.shape == (count, height, 2 * width, 3)
    # Lossy H.264 (4:2:0 chroma): each half is close to its frame, much closer than to the next.
    colours = np.stack([np.asarray(Image.open(out / f"drive_{k:06d}_disp.png"))
                        for k in range(count)])
    for half, want in ((side[:, :, :width], frames), (side[:, :, width:], colours)):
        error = np.abs(half - want)
        assert np.median(error) <= 3
        assert error.mean() < 0.5 * np.abs(half - np.roll(want, 1, axis=0)).mean()

    # Frames 0 and 5 (first batch, and the padded last one) as images, decoded independently.
    stills = tmp_path / "stills"
    stills.mkdir()
    decoded = _decode(video)
    np.testing.assert_array_equal(decoded, frames)  # lossless input
    for k in (0, 5):
        Image.fromarray(decoded[k]).save(stills / f"frame_{k}.png")
    assert predict.main([str(stills), "--workdir", workdir, "--output_dir", str(tmp_path / "im"),
                         "--batch_size", "4"]) == 0
    for k in (0, 5):
        np.testing.assert_allclose(depths[k], np.load(tmp_path / "im" / f"frame_{k}_depth.npy"),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(depths[0], depths[5])  # the frames differ, and so do their depths


# ------------------------------------------------------- sequences for multi-frame recipes
def test_multi_frame_recipes_get_frame_t_minus_1(tmp_path, monkeypatch):
    from jdepth import inference

    predict = _tool("predict")
    model = _Model(lookup_offsets=(-1,))
    monkeypatch.setattr(inference.DepthPredictor, "from_workdir", lambda *a: model)

    frames = _frames(6, 32, 64)
    video = tmp_path / "seq.mp4"
    _write_lossless_video(video, frames)
    assert predict.main([str(video), "--workdir", "w", "--output_dir", str(tmp_path / "v"),
                         "--batch_size", "4"]) == 0
    images = [im for call in model.calls for im in call["images"]]
    lookups = [im for call in model.calls for im in call["lookup"]]
    np.testing.assert_array_equal(np.stack(images), frames)
    # Frame t-1 across the batch boundary (frame 4's is the first batch's last); frame 0 itself.
    np.testing.assert_array_equal(np.stack(lookups), frames[[0, 0, 1, 2, 3, 4]])
    want_K = calibration.scale_intrinsics(calibration.MONODEPTH2_NORMALISED_INTRINSICS,
                                          model.width, model.height)
    for call in model.calls:
        np.testing.assert_allclose(call["K"], np.broadcast_to(want_K, call["K"].shape))

    # A frame folder: natural order (frame_2 before frame_10), t-1 within each folder only.
    folder = tmp_path / "frames"
    (folder / "b").mkdir(parents=True)
    seq = _frames(11, 8, 12)
    for k in range(1, 11):
        Image.fromarray(seq[k]).save(folder / f"frame_{k}.png")
    Image.fromarray(seq[0]).save(folder / "b" / "frame_0.png")
    model.calls.clear()
    assert predict.main([str(folder), "--workdir", "w", "--output_dir", str(tmp_path / "f"),
                         "--batch_size", "3", "--intrinsics", "10,11,6,4"]) == 0
    images = np.stack([im for call in model.calls for im in call["images"]])
    lookups = np.stack([im for call in model.calls for im in call["lookup"]])
    np.testing.assert_array_equal(images, seq[list(range(1, 11)) + [0]])
    np.testing.assert_array_equal(lookups, seq[[1] + list(range(1, 10)) + [0]])
    K = np.concatenate([call["K"] for call in model.calls])[0]
    np.testing.assert_allclose(K[:2, :3], [[10 * 24 / 12, 0, 6 * 24 / 12],
                                           [0, 11 * 16 / 8, 4 * 16 / 8]])
    assert len(os.listdir(tmp_path / "f" / "b")) == 3


@pytest.mark.slow
def test_manydepth_video_end_to_end(tmp_path):
    """The real ManyDepth network (64x64, 8 bins, random weights) on a video: each frame's depth is
    the predictor's with frame t-1 as lookup (frame 0: itself), the matching changes it."""
    from test_manydepth import random_variables, small_config

    from jdepth.inference import DepthPredictor
    from jdepth.training import checkpoint

    config = small_config()
    params, batch_stats = jax.tree_util.tree_map(np.asarray, random_variables(config))
    # Small pose-net motions, as test_manydepth's evaluation test: a confident cost volume.
    pose_out = params["pose"]["decoder"]["pose_2"]
    pose_out["kernel"], pose_out["bias"] = pose_out["kernel"] * 0.02, pose_out["bias"] * 0.02
    workdir = str(tmp_path / "manydepth")
    checkpoint.save_config(workdir, config)
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(1, {"params": params, "batch_stats": batch_stats,
                  "extra": {"min_depth_bin": np.float32(0.5), "max_depth_bin": np.float32(20.0)}},
              {"step": np.int64(1)}, None)
    ckpt.close()
    frames = _frames(5, 32, 64)
    _write_lossless_video(tmp_path / "v.mp4", frames)
    predict = _tool("predict")
    assert predict.main([str(tmp_path / "v.mp4"), "--workdir", workdir, "--output_dir",
                         str(tmp_path / "out"), "--batch_size", "2"]) == 0

    predictor = DepthPredictor.from_workdir(workdir)
    K = calibration.scale_intrinsics(calibration.MONODEPTH2_NORMALISED_INTRINSICS,
                                     predictor.width, predictor.height)
    want = predictor.predict_disparity(list(frames), batch_size=2, K=np.stack([K] * 5),
                                       lookup=list(frames[[0, 0, 1, 2, 3]]))
    for k in range(5):
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"v_{k:06d}_depth.npy"),
                                   1.0 / predict.to_size(want[k], 32, 64), rtol=1e-5)
    static = predictor.predict_disparity([frames[1]], batch_size=2, lookup=[frames[1]],
                                         K=K[None])
    assert np.abs(static[0] - want[1]).max() > 1e-2


# ------------------------------------------------------------------------ PyAV is optional
def test_missing_pyav_names_the_extra_before_loading_the_model(tmp_path, monkeypatch):
    from jdepth import inference

    predict = _tool("predict")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: the import fails first")
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError

    def never(*args):
        raise AssertionError("the model was loaded before the missing PyAV was reported")

    monkeypatch.setattr(inference.DepthPredictor, "from_workdir", never)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[video\]'"):
        predict.main([str(video), "--workdir", "w", "--output_dir", str(tmp_path / "o")])


def test_jdepth_imports_without_pyav():
    code = ("import sys; sys.modules['av'] = None; "
            "import jdepth.inference, jdepth.pointcloud, jdepth.evaluate")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
