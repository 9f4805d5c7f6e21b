"""Issue 25: every bad input is refused up front, naming the file; nothing hangs; a resume never
corrupts a run. One test (or a few) per row of the issue, each asserting the exact error type and
that the message names the file or config key and the problem."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import optax
import pytest
from PIL import Image

import jax.numpy as jnp

from conftest import REPO, load_config
from jdepth.data import kitti, pipeline, validate
from jdepth.data.validate import ValidationError
from jdepth.eval import depth_eval
from jdepth.training import checkpoint, loop, preflight, summary
from jdepth.training.state import TrainState, make_optimizer


def _config(root: str):
    """configs/demo.py on the tiny synthetic set (64x96, batch 2)."""
    config = load_config("demo")
    config.data.root = root
    config.data.height, config.data.width = 64, 96
    config.train.batch_size = 2
    config.train.progress_bar = False
    return config


def _copy(synthetic_root, tmp_path) -> str:
    root = str(tmp_path / "kitti")
    shutil.copytree(synthetic_root, root)
    return root


def _split(root: str, name: str) -> str:
    return os.path.join(root, "splits", f"{name}_files.txt")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return env


# -------------------------------------------------------- row 1: unwritable checkpoints folder


def _dac_free_prefix() -> list[str] | None:
    """A command prefix under which file permissions apply to this process: none needed for a
    normal user; for root (which ignores them) `setpriv` dropping CAP_DAC_OVERRIDE; None when
    neither works (the tests then fall back to simulating the PermissionError)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search",
              "--inh-caps=-dac_override,-dac_read_search"]
    probe = subprocess.run(prefix + ["true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def _run_unprivileged(code: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(_dac_free_prefix() + [sys.executable, "-c", code], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def test_row1_unwritable_checkpoints_folder_is_refused_before_anything_is_built(
        synthetic_root, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    ckpt_dir = workdir / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    os.chmod(ckpt_dir, 0o555)
    try:
        prefix = _dac_free_prefix()
        if prefix is None:  # root without setpriv: the permission error is simulated
            real_mkstemp = preflight.tempfile.mkstemp

            def mkstemp(*args, dir=None, **kw):
                if os.path.abspath(dir) == str(ckpt_dir):
                    raise PermissionError(13, "Permission denied", dir)
                return real_mkstemp(*args, dir=dir, **kw)

            monkeypatch.setattr(preflight.tempfile, "mkstemp", mkstemp)
            with pytest.raises(ValidationError) as info:
                loop.train_and_evaluate(_config(synthetic_root), str(workdir))
            output = f"ValidationError\n{info.value}"
        else:
            code = (
                "import sys; sys.path.insert(0, 'tests')\n"
                "from conftest import load_config\n"
                "from jdepth.training import loop\n"
                "config = load_config('demo')\n"
                f"config.data.root = {synthetic_root!r}\n"
                "config.data.height, config.data.width = 64, 96\n"
                "config.train.batch_size = 2\n"
                "try:\n"
                f"    loop.train_and_evaluate(config, {str(workdir)!r})\n"
                "except Exception as exc:\n"
                "    print(type(exc).__name__); print(exc)\n"
            )
            start = time.perf_counter()
            result = _run_unprivileged(code, timeout=300)
            output = result.stdout + result.stderr
            assert time.perf_counter() - start < 120, output
        assert output.splitlines()[0] == "ValidationError" or "\nValidationError\n" in output, output
        assert f"{ckpt_dir}: folder is not writable" in output
        assert "building networks" not in output  # refused before any network was built
    finally:
        os.chmod(ckpt_dir, 0o755)


def test_row1_a_failed_checkpoint_save_raises_at_once_and_the_process_exits(tmp_path,
                                                                          monkeypatch):
    """Orbax's asynchronous save left a thread waiting forever after the PermissionError; the
    synchronous save raises CheckpointWriteError in the caller and the process exits."""
    workdir = tmp_path / "run"
    prefix = _dac_free_prefix()
    if prefix is None:  # root without setpriv: orbax's own failure is simulated
        ckpt = checkpoint.Checkpointer(str(workdir))

        def fail(*args, **kwargs):
            raise PermissionError(13, "Permission denied", ckpt.directory)

        monkeypatch.setattr(ckpt.manager, "save", fail)
        with pytest.raises(checkpoint.CheckpointWriteError) as info:
            ckpt.save(1, {"w": np.ones(3)}, {"step": np.int64(1)}, {})
        assert ckpt.directory in str(info.value)
        return
    code = (
        "import os, numpy as np\n"
        "from jdepth.training import checkpoint\n"
        f"ckpt = checkpoint.Checkpointer({str(workdir)!r})\n"
        "os.chmod(ckpt.directory, 0o555)\n"
        "for step in (1, 2):\n"
        "    try:\n"
        "        ckpt.save(step, {'w': np.ones(3)}, {'step': np.int64(step)}, {})\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, '|', exc)\n"
    )
    try:
        result = _run_unprivileged(code, timeout=120)  # the old code never exited
    finally:
        os.chmod(workdir / "checkpoints", 0o755)
    lines = [l for l in result.stdout.splitlines() if l.startswith("CheckpointWriteError")]
    assert result.returncode == 0 and len(lines) == 2, result.stdout + result.stderr
    assert f"{workdir / 'checkpoints'}: cannot write checkpoint 1" in lines[0]
    assert "Permission denied" in lines[0]


# --------------------------------------------------- row 2: ground truth of another split / size


def _object_array(maps):
    """Monodepth2's GT file layout: an object array of maps, without split metadata."""
    data = np.empty(len(maps), object)
    for i, depth in enumerate(maps):
        data[i] = depth
    return data


def test_row2_ground_truth_of_another_split_or_size_is_refused(synthetic_root, tmp_path,
                                                              caplog):
    root = synthetic_root
    val, test = _split(root, "val"), _split(root, "test")
    val_refs, test_refs = kitti.read_split_file(val), kitti.read_split_file(test)
    assert len(val_refs) == len(test_refs)  # the count alone cannot tell them apart
    gt_val = kitti.export_gt_depths(root, val_refs)
    path = str(tmp_path / "gt_val.npz")
    kitti.save_gt_depths(path, gt_val, val_refs)

    with pytest.raises(kitti.GroundTruthMismatchError) as info:
        depth_eval.check_split_gt(root, test, kitti.load_gt_file(path))
    assert str(info.value).startswith(f"{path}: exported from another split than {test}")

    # The right split passes; transposed and half-size maps do not.
    depth_eval.check_split_gt(root, val, kitti.load_gt_file(path))
    for name, maps in (("transposed", [d.T for d in gt_val]),
                       ("half", [d[::2, ::2] for d in gt_val])):
        bad = str(tmp_path / f"gt_{name}.npz")
        kitti.save_gt_depths(bad, maps, val_refs)
        with pytest.raises(kitti.GroundTruthMismatchError) as info:
            depth_eval.check_split_gt(root, val, kitti.load_gt_file(bad))
        h, w = gt_val[0].shape
        got = maps[0].shape
        assert str(info.value).startswith(f"{bad}: map sizes do not match the images")
        assert f"map 0 ({val_refs[0].folder} {val_refs[0].frame_index} l) is {got[0]}x{got[1]}" \
            f" but the size of the image is {h}x{w}" in str(info.value)

    # A file without split metadata (Monodepth2's layout): accepted with a one-line warning,
    # its sizes still checked.
    old = str(tmp_path / "gt_old.npz")
    np.savez_compressed(old, data=_object_array(gt_val))
    with caplog.at_level(logging.WARNING, logger="jdepth"):
        depth_eval.check_split_gt(root, test, kitti.load_gt_file(old))
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert f"{old}: no split fingerprint" in caplog.records[0].getMessage()
    old_t = str(tmp_path / "gt_old_t.npz")
    np.savez_compressed(old_t, data=_object_array([d.T for d in gt_val]))
    with pytest.raises(kitti.GroundTruthMismatchError, match="map sizes do not match"):
        depth_eval.check_split_gt(root, test, kitti.load_gt_file(old_t))


def test_row2_evaluate_cli_refuses_before_restoring_the_model(synthetic_root, tmp_path):
    from jdepth import evaluate

    val_refs = kitti.read_split_file(_split(synthetic_root, "val"))
    path = str(tmp_path / "gt_val.npz")
    kitti.save_gt_depths(path, kitti.export_gt_depths(synthetic_root, val_refs), val_refs)
    missing_workdir = str(tmp_path / "no_such_run")  # never reached
    with pytest.raises(kitti.GroundTruthMismatchError, match=f"{path}: exported from another"):
        evaluate.main(["--workdir", missing_workdir, "--data_root", synthetic_root,
                       "--split_file", _split(synthetic_root, "test"), "--gt", path])


def test_row2_stale_gt_cache_of_a_run_is_exported_again(synthetic_root, tmp_path):
    cache = str(tmp_path / "eval" / "gt_test.npz")
    val, test = _split(synthetic_root, "val"), _split(synthetic_root, "test")
    depth_eval.gt_depths_for_split(synthetic_root, val, cache)
    gt = depth_eval.gt_depths_for_split(synthetic_root, test, cache)
    test_refs = kitti.read_split_file(test)
    assert gt.split_fingerprint == kitti.split_fingerprint(test_refs)
    assert kitti.load_gt_file(cache).split_fingerprint == kitti.split_fingerprint(test_refs)


# ---------------------------------------------------------------------- row 3: calibration values


def _edit_calib(root: str, key: str, edit) -> str:
    date = kitti.read_split_file(_split(root, "train"))[0].date
    path = os.path.join(root, date, "calib_cam_to_cam.txt")
    lines = open(path).read().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{key}:"):
            lines[i] = f"{key}: " + edit(line.split(":", 1)[1].split())
    open(path, "w").write("\n".join(lines) + "\n")
    return path


def _p_rect(scale_focal=1.0, scale_all=1.0):
    def edit(values):
        v = [float(x) for x in values]
        v[0] *= scale_focal
        v[5] *= scale_focal
        return " ".join(f"{x * scale_all:e}" for x in v)
    return edit


@pytest.mark.parametrize("edit, problem", [
    (_p_rect(scale_focal=0.0), "focal lengths fx=0, fy=0 must be positive"),
    (_p_rect(scale_all=100.0), "principal point (4800, 3200) lies outside the 96x64 image"),
    (lambda v: " ".join(v[:3] + ["1.0e+0x"] + v[4:]), "has a non-numeric value '1.0e+0x'"),
    (lambda v: "n/a", "is not numeric: 'n/a'"),
    (lambda v: " ".join(v[:2] + ["nan"] + v[3:]), "has a non-finite value"),
])
def test_row3_unusable_calibration_names_file_key_and_problem(synthetic_root, tmp_path, edit,
                                                             problem):
    root = _copy(synthetic_root, tmp_path)
    path = _edit_calib(root, "P_rect_02", edit)
    date_dir = os.path.dirname(path)
    with pytest.raises(kitti.DataError) as info:
        kitti.load_camera_calibration(date_dir, 2)
    assert str(info.value).startswith(path) and problem in str(info.value)
    # KittiFrames parses every drive's calibration at construction, as its docstring says.
    pipeline._normalised_intrinsics.cache_clear()
    with pytest.raises(kitti.DataError, match="P_rect_02"):
        pipeline.KittiFrames(root, _split(root, "train"))
    # The validation pass reports it once, naming the split line that uses it.
    with pytest.raises(ValidationError) as info:
        preflight.run(_config(root), str(tmp_path / "run"))
    text = str(info.value)
    assert f"{_split(root, 'train')}:1: calibration of camera 2 unusable: {path}" in text
    assert problem in text and text.count("calibration of camera 2") == 1


# ------------------------------------------------------ row 4: bad val / test splits, up front


def test_row4_malformed_val_and_test_splits_are_refused_before_training(synthetic_root,
                                                                       tmp_path):
    root = _copy(synthetic_root, tmp_path)
    for name, bad in (("train", "2030_01_01/x_sync twelve l"), ("val", "drive 3"),
                      ("test", "2030_01_01/x_sync 1 q")):
        with open(_split(root, name), "a") as f:
            f.write(bad + "\n")
    workdir = tmp_path / "run"
    start = time.perf_counter()
    with pytest.raises(ValidationError) as info:
        loop.train_and_evaluate(_config(root), str(workdir))
    assert time.perf_counter() - start < 10  # no network was built
    text = str(info.value)
    assert text.startswith("3 problems found before training:")
    for name, n, bad in (("train", 9, "twelve"), ("val", 9, "drive 3"), ("test", 9, "x_sync 1 q")):
        assert f"{_split(root, name)}:{n}: expected '<date>/<drive folder> <frame index> " in text
        assert bad in text
    assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()


# --------------------------------------------------------------------- row 5: config values, keys


def test_row5_out_of_range_config_values_are_refused_by_key(synthetic_root, tmp_path):
    config = _config(synthetic_root)
    config.optim.lr = -1.0
    config.train.batch_size = 0
    config.train.parallel = "foo"
    with pytest.raises(ValidationError) as info:
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    text = str(info.value)
    assert "config.optim.lr: must be a positive finite number, got -1.0" in text
    assert "config.train.batch_size: must be an integer >= 1, got 0" in text
    assert "config.train.parallel: must be one of ('pmap', 'jit'), got 'foo'" in text


def test_row5_unknown_config_key_is_one_line_with_the_closest_keys(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jdepth.train", "--config", str(REPO / "configs" / "demo.py"),
         "--workdir", str(tmp_path / "run"), "--config.optim.lrr=1e-4"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: config.optim.lrr: unknown config key; closest: optim.lr, optim.b2, optim.b1 "
        f"(in {REPO / 'configs' / 'demo.py'})")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------- row 6: config change on resume


def _trained_workdir(tmp_path, config) -> str:
    """A workdir as a run leaves it: config.json and one checkpoint folder."""
    workdir = str(tmp_path / "run")
    checkpoint.write_config(workdir, config)
    os.makedirs(os.path.join(workdir, "checkpoints", "10"))
    return workdir


def test_row6_changed_config_is_refused_and_config_json_kept(synthetic_root, tmp_path):
    config = preflight.run(_config(synthetic_root), str(tmp_path / "first")).config
    workdir = _trained_workdir(tmp_path, config)
    before = open(os.path.join(workdir, "config.json")).read()
    config.optim.pose_lr_scale = 1.0
    with pytest.raises(ValidationError) as info:
        loop.train_and_evaluate(config, workdir)
    assert str(info.value).splitlines()[1] == (
        f"  {workdir}/config.json: this config differs from the one the workdir's checkpoints "
        "were trained with: optim.pose_lr_scale 10.0 -> 1.0; resume with the old values, use a "
        "new --workdir, or pass --allow_config_change (the old config is then kept as "
        "config.<time>.json)")
    assert open(os.path.join(workdir, "config.json")).read() == before
    # Allowed: reported, and the old config is moved aside when the new one is written.
    checked = preflight.run(config, workdir, allow_config_change=True)
    assert checked.changes == [("optim.pose_lr_scale", 10.0, 1.0)]
    kept = checkpoint.write_config(workdir, checked.config, keep_old=True)
    assert open(kept).read() == before and os.path.basename(kept).startswith("config.")


def test_row6_checkpoints_without_config_json_are_refused(synthetic_root, tmp_path):
    config = preflight.run(_config(synthetic_root), str(tmp_path / "first")).config
    workdir = _trained_workdir(tmp_path, config)
    os.remove(os.path.join(workdir, "config.json"))
    with pytest.raises(ValidationError) as info:
        loop.train_and_evaluate(config, workdir)
    assert (f"{workdir}/checkpoints: the workdir holds checkpoints but no config.json"
            in str(info.value))


def test_row6_checkpoint_of_another_optimizer_is_a_clear_error(tmp_path):
    """pose_lr_scale 10 -> 1 changes the optimizer's structure (per-network Adam -> one Adam);
    even when the change is allowed, the restore names the checkpoint and the change."""
    optim = load_config("demo").optim
    params = {"depth": {"w": jnp.ones(3)}, "pose": {"w": jnp.ones(2)}}
    old = TrainState.create(params, {}, make_optimizer(optim, 10))
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(10, {"params": old.params, "batch_stats": {}, "extra": {}},
              {"step": np.int64(10), "opt_state": old.opt_state}, {})
    optim.pose_lr_scale = 1.0
    new = TrainState.create(params, {}, make_optimizer(optim, 10))
    changes = [("optim.pose_lr_scale", 10.0, 1.0)]
    with pytest.raises(checkpoint.CheckpointMismatchError) as info:
        loop._restore(ckpt, new, None, changes)
    text = str(info.value)
    assert text.startswith(f"{ckpt.directory}/10: the checkpoint does not fit the state")
    assert "optim.pose_lr_scale 10.0 -> 1.0" in text
    ckpt.close()


# ----------------------------------------------------------------- row 7: predict.py, bad images


def test_row7_predict_skips_an_unreadable_image_and_writes_the_others(tmp_path, monkeypatch):
    import importlib.util

    from jdepth import inference

    spec = importlib.util.spec_from_file_location("predict", REPO / "tools" / "predict.py")
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(folder / name)
    with open(folder / "b.png", "r+b") as f:
        f.truncate(100)

    loaded, failures = predict.load_images(predict.find_images([str(folder)]))
    assert [stem for _, stem, _ in loaded] == ["a", "c"]
    [(path, error)] = failures
    assert type(error) is kitti.DataError and str(error).startswith(f"{folder / 'b.png'}: ")

    class Flat:  # the network is not what is tested here
        width, height = 16, 8

        def predict_disparity(self, images, batch_size):
            return np.stack([np.full((8, 16), 0.5 + i, np.float32) for i in range(len(images))])

    monkeypatch.setattr(inference.DepthPredictor, "from_workdir", lambda *a: Flat())
    out = tmp_path / "out"
    assert predict.main(["--workdir", "unused", "--output_dir", str(out), "--batch_size", "3",
                         str(folder)]) == 1
    assert sorted(os.listdir(out)) == sorted(f"{s}_{k}" for s in "ac"
                                             for k in ("depth.png", "depth.npy", "disp.png"))


# ------------------------------------------------------------- row 8: metrics.jsonl on a resume


def test_row8_resume_drops_the_records_it_logs_again(tmp_path):
    workdir = str(tmp_path)
    writer = summary.SummaryWriter(workdir, resume_step=0)
    for step in range(1, 7):
        writer.scalars(step, {"loss": 1.0 / step})
    writer.scalars(6, {"test/abs_rel": 0.3})
    writer.close()
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 7, "lo')  # torn by a kill mid-write

    writer = summary.SummaryWriter(workdir, resume_step=4)  # the last checkpoint was step 4
    for step in range(5, 7):
        writer.scalars(step, {"loss": 2.0 / step})
    writer.scalars(6, {"test/abs_rel": 0.2})
    writer.close()
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 6]
    assert [r.get("loss") for r in rows[3:6]] == [0.25, 0.4, 2.0 / 6]
    assert rows[-1] == {"step": 6, "test/abs_rel": 0.2}


# ------------------------------------------------- row 10: wrong root, boundary, missing camera


def test_row10_wrong_root_and_missing_camera_say_so(synthetic_root, tmp_path):
    ref = kitti.read_split_file(_split(synthetic_root, "train"))[0]
    deep = os.path.join(synthetic_root, ref.date)
    with pytest.raises(kitti.MissingFileError, match="one level too deep: use "
                       + synthetic_root.rstrip("/")):
        kitti.neighbour_index(deep, ref, 0)
    undated = kitti.FrameRef(os.path.basename(ref.folder), ref.frame_index, "l")
    with pytest.raises(kitti.MissingFileError, match="has no date folder"):
        kitti.neighbour_index(synthetic_root, undated, 0)
    with pytest.raises(kitti.MissingFileError, match="frame 0 has no frame -1 .*first frame"):
        kitti.neighbour_index(synthetic_root, kitti.FrameRef(ref.folder, 0, "l"), -1)
    with pytest.raises(kitti.MissingFileError, match="the drive has no camera 3 images"):
        kitti.neighbour_index(synthetic_root, kitti.FrameRef(ref.folder, 1, "r"), 0)
    with pytest.raises(kitti.MissingFileError, match="names a frame the drive does not have"):
        kitti.neighbour_index(synthetic_root, kitti.FrameRef(ref.folder, 97, "l"), 0)

    # The validation pass lists all of these at once, once per drive, naming the line.
    split = tmp_path / "train.txt"
    split.write_text(f"{ref.folder} 0 l\n{ref.folder} 1 r\n{undated.folder} 2 l\n"
                     f"{ref.folder} 97 l\n{ref.folder} 9 l\n")
    report = validate.check_data(synthetic_root, [
        validate.SplitSpec("train", str(split), offsets=(0, -1, 1))])
    text = "\n".join(map(str, report.problems))
    assert f"{split}:1: frame 0 has no frame -1 (offset -1): sequence boundary" in text
    assert f"{split}:2: {os.path.join(synthetic_root, ref.folder, 'image_03', 'data')}: no such" \
        " folder: 1 line(s) ask for camera 3 (side 'r')" in text
    assert f"{split}:3: drive folder" in text and "has no date folder" in text
    assert f"{split}:4: frame 97 not found" in text
    assert f"{split}:5: frame 9 has no frame 10 (offset +1): sequence boundary" in text
    assert len(report.problems) == 5


# ------------------------------------------------------------------------ validation wall time


def _fake_layout(root: str, drives: int, frames: int) -> str:
    """A KITTI tree of empty image files (one real PNG per drive for the header sample) and a
    split of drives x (frames - 2) lines; returns the split path."""
    date = "2011_09_26"
    os.makedirs(os.path.join(root, date))
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        shutil.copy(os.path.join(REPO, "tests", "data", "kitti_tiny", date, name),
                    os.path.join(root, date, name))
    lines = []
    for d in range(drives):
        folder = f"{date}/{date}_drive_{d:04d}_sync"
        image_dir = os.path.join(root, folder, "image_02", "data")
        os.makedirs(image_dir)
        for i in range(frames):
            open(os.path.join(image_dir, f"{i:010d}.png"), "wb").close()
        Image.new("RGB", (1242, 375)).save(os.path.join(image_dir, f"{1:010d}.png"))
        lines += [f"{folder} {i} l\n" for i in range(1, frames - 1)]
    split = os.path.join(root, "train_files.txt")
    with open(split, "w") as f:
        f.writelines(lines)
    return split


def test_validation_of_a_40k_line_split_takes_seconds(tmp_path):
    split = _fake_layout(str(tmp_path), drives=40, frames=1002)
    spec = validate.SplitSpec("train", split, offsets=(0, -1, 1))
    report = validate.check_data(str(tmp_path), [spec])
    assert report.problems == [] and report.frames == {"train": 40000} and report.drives == 40
    print(f"validation of 40000 lines, 40 drives: {report.seconds:.2f} s")
    assert report.seconds < 10


# ------------------------------------------------ row 9: a non-finite gradient in a real step


@pytest.mark.slow
def test_row9_nan_gradient_skips_the_update_counts_it_and_the_bound_stops_the_run(
        synthetic_root, tmp_path, monkeypatch, capsys, fast_compiles):
    """The compiled Monodepth2 step of a real run, with a NaN written into one gradient leaf at
    steps 3, 5 and 6: those updates leave params and Adam state as they were, the run goes on
    training in between, `skipped_steps` counts them, and the third one (over
    train.max_skipped_steps=2) stops the run before it is checkpointed. Also shows the progress
    lines a run prints before its first logged step (issue 25, item 11)."""
    import jax

    from jdepth.training import recipes

    poisoned_steps = jnp.array([3, 5, 6])
    apply_gradients = TrainState.apply_gradients

    def poisoned(self, grads, batch_stats, extra=None):
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        bad = jnp.isin(self.step + 1, poisoned_steps)  # the step this update completes
        corner = (0,) * leaves[0].ndim
        leaves[0] = jnp.where(bad, leaves[0].at[corner].set(jnp.nan), leaves[0])
        return apply_gradients(self, jax.tree_util.tree_unflatten(treedef, leaves), batch_stats,
                               extra)

    monkeypatch.setattr(TrainState, "apply_gradients", poisoned)
    config = _config(synthetic_root)
    config.train.update(max_steps=8, log_every=1, ckpt_every_steps=1, max_to_keep=10,
                        eval_every_epochs=0, max_skipped_steps=2)
    workdir = str(tmp_path / "run")
    with pytest.raises(loop.NonFiniteLossError) as info:
        loop.train_and_evaluate(config, workdir)
    assert str(info.value).startswith("3 updates skipped for a non-finite gradient by step 6 "
                                      "(limit train.max_skipped_steps=2)")
    out = capsys.readouterr().out
    for line in ("validating config, workdir and data ...", "building networks ...",
                 "compiling the train step (first call; minutes on a CPU) ...",
                 "first step done in "):
        assert line in out, out

    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [(r["step"], r["skipped_steps"]) for r in rows] == [
        (1, 0), (2, 0), (3, 1), (4, 1), (5, 2)]
    assert all(np.isfinite(r["loss"]) for r in rows)

    # Checkpoints 1-5 (the stopped step 6 was not saved): a skipped step's params and optimizer
    # state equal the previous step's bit for bit; the finite step between them trained.
    run_config = json.load(open(os.path.join(workdir, "config.json")))
    steps_per_epoch = len(kitti.read_split_file(run_config["data"]["train_split"])) // 2
    model = recipes.abstract_state_tree(config)
    tx = make_optimizer(config.optim, steps_per_epoch)
    opt = {"step": np.int64(0), "opt_state": jax.eval_shape(tx.init, model["params"])}
    ckpt = checkpoint.Checkpointer(workdir)
    assert ckpt.manager.all_steps() == [1, 2, 3, 4, 5]
    saved = {s: ckpt.restore(model, opt, s)[:2] for s in range(2, 6)}
    ckpt.close()

    def leaves(step):
        restored_model, restored_opt = saved[step]
        return jax.tree_util.tree_leaves((restored_model["params"], restored_model["batch_stats"],
                                          restored_opt["opt_state"]))

    def identical(a, b):
        return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))

    assert identical(2, 3) and identical(4, 5)
    assert not identical(3, 4)
    assert [int(saved[s][1]["step"]) for s in range(2, 6)] == [2, 3, 4, 5]
