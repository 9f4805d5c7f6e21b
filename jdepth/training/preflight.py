"""The validation pass of `train_and_evaluate`: everything a run will need, checked before any
network is built or compiled, with every problem reported at once.

What it checks (each problem names the file and line, or the config key):
  * config values in their ranges (jdepth/training/config_check.py);
  * the workdir and its checkpoints, eval and tb folders can be written (a probe file is created
    and deleted in each);
  * your own sequences (config.data.sequences): prepared once into a KITTI-layout tree, whose
    problems (unreadable video, bad intrinsics, too short, bad speed CSV) name the file; a speed
    loss without a speed file, or a frame interval that is not the video's;
  * the data root, every split the run reads, every frame and neighbour of every line, the
    per-frame files the recipe reads, each drive's calibration (jdepth/data/validate.py);
  * the config against the workdir's config.json when the workdir holds checkpoints: a change is
    refused unless allowed (`--allow_config_change`), since the checkpoints were trained with the
    old one;
  * files the config points at (pretrained weights, a distillation teacher's workdir).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np

from jdepth.data import kitti, sequence_cache
from jdepth.data.validate import DataReport, Problem, SplitSpec, ValidationError, check_data
from jdepth.interop import encoder_init
from jdepth.training import checkpoint, config_check, datasets

# Baseline depth sources (jdepth.training.loop.mean_depth_baseline), best first.
BASELINE_SOURCES = ("dense_gt", "velodyne")


@dataclasses.dataclass
class Preflight:
    """What a passed validation hands to the train loop.

    Attributes:
      config: the config with `data.root` and the split paths resolved.
      report: the data pass (frames per split, drives, time, baseline sources present).
      changes: (key, old, new) against the workdir's config.json that were allowed.
      path_changes: data paths that differ from the workdir's config.json (always allowed).
    """

    config: object
    report: DataReport
    changes: list
    path_changes: list

    def baseline_source(self) -> str | None:
        """'dense_gt' or 'velodyne' when every training frame has it, else None."""
        for kind in BASELINE_SOURCES:
            if self.report.complete.get(("train", kind)):
                return kind
        return None


def _probe(folder: str) -> str | None:
    """None when a file can be created and deleted in `folder`, else the error."""
    try:
        fd, path = tempfile.mkstemp(prefix=".jdepth_write_probe_", dir=folder)
        os.close(fd)
        os.remove(path)
    except OSError as exc:
        return str(exc)
    return None


def workdir_problems(workdir: str) -> list[Problem]:
    """The workdir exists (created if needed) and it and its existing sub-folders and log files
    can be written. A checkpoints folder that could not be written made orbax fail in a
    background thread after the first save (issue 25)."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as exc:
        return [Problem(workdir, f"cannot create the workdir: {exc}")]
    problems = []
    for folder in (workdir, checkpoint.checkpoint_dir(workdir), os.path.join(workdir, "eval"),
                   os.path.join(workdir, "tb")):
        if os.path.isdir(folder):
            error = _probe(folder)
            if error:
                problems.append(Problem(folder, f"folder is not writable ({error}); the run "
                                        "writes checkpoints, logs and evaluation here"))
    for name in ("metrics.jsonl", "config.json"):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            try:
                with open(path, "a"):
                    pass
            except OSError as exc:
                problems.append(Problem(path, f"file is not writable ({exc})"))
    return problems


def config_change_problems(workdir: str, config, allow: bool) -> tuple[list[Problem], list, list]:
    """Compares `config` with the workdir's config.json; nothing is written here.

    Returns:
      (problems, changes, path_changes): a problem when the workdir holds checkpoints and the
      config changed (or config.json is missing) and `allow` is False; the changed keys other
      than data paths and `config_check.FREE_KEYS`; the changed data paths.
    """
    path = os.path.join(workdir, "config.json")
    old = checkpoint.read_config_json(workdir)
    trained = checkpoint.has_checkpoints(workdir)
    if old is None:
        if trained and not allow:
            return [Problem(checkpoint.checkpoint_dir(workdir), "the workdir holds checkpoints but "
                            "no config.json, so they cannot be checked against this config; "
                            "put the run's config.json back, use a new --workdir, or pass "
                            "--allow_config_change to try resuming with this config")], [], []
        return [], [], []
    changes = [c for c in config_check.changed_keys(old, checkpoint.config_as_dict(config))
               if c[0] not in config_check.FREE_KEYS]
    path_changes = [c for c in changes if c[0] in config_check.PATH_KEYS]
    changes = [c for c in changes if c[0] not in config_check.PATH_KEYS]
    if changes and trained and not allow:
        return [Problem(path, "this config differs from the one the workdir's checkpoints were "
                        f"trained with: {config_check.format_changes(changes)}; resume with the "
                        "old values, use a new --workdir, or pass --allow_config_change (the old "
                        "config is then kept as config.<time>.json)")], changes, path_changes
    return [], changes, path_changes


def _gt_cache_matches(workdir: str, split: str, split_file: str) -> bool:
    """Whether W/eval/gt_<split>.npz was exported from `split_file` (then no scans are read)."""
    cache = os.path.join(workdir, "eval", f"gt_{split}.npz")
    if not os.path.exists(cache):
        return False
    try:
        with np.load(cache, allow_pickle=False) as npz:
            stored = str(npz["split_fingerprint"]) if "split_fingerprint" in npz.files else None
        return stored == kitti.split_fingerprint(kitti.read_split_file(split_file))
    except (OSError, ValueError, KeyError):
        return False


# Per-target file kind each evaluation ground truth reads (config.data.gt_kind).
GT_FILE_KINDS = {"velodyne": "velodyne", "dense": "dense_gt", "none": None}


def gt_kind(config) -> str:
    """The resolved ground-truth kind: 'velodyne' (the default), 'dense' or 'none'."""
    return config.data.get("gt_kind") or "velodyne"


def data_specs(config, workdir: str) -> list[SplitSpec]:
    """What the run reads from each split: training frames and neighbours (plus labels or oxts
    when the recipe reads them), evaluation frames and their ground truth (velodyne scans or
    dense depth, `gt_kind`; nothing without ground truth, where nothing is evaluated)."""
    d = config.data
    kind = GT_FILE_KINDS.get(gt_kind(config))
    frame_ids = tuple(d.frame_ids) if config_check.is_valid(config, "data.frame_ids") else (0,)
    per_frame = tuple(kind for kind, on in (("panoptic", d.get("load_panoptic")),
                                            ("oxts", d.get("load_velocity"))) if on)
    common = dict(img_ext=d.get("img_ext"))
    specs = [SplitSpec("train", d.train_split, offsets=frame_ids,
                       on_missing=d.get("on_missing", "raise"), per_frame=per_frame,
                       optional=BASELINE_SOURCES, **common)]
    splits = ["test"] if kind else []
    if config.train.get("eval_every_epochs") and kind:
        splits.insert(0, "val")
    for split in splits:
        path = d[f"{split}_split"]
        needs_gt = not (path and os.path.isfile(path) and _gt_cache_matches(workdir, split, path))
        specs.append(SplitSpec(split, path, per_target=(kind,) if needs_gt else (), **common))
    return specs


def sequence_problems(config) -> list[Problem]:
    """What the prepared sequences lack for this run: a speed file per sequence when the speed
    loss reads speeds, and a frame interval that matches each video's rate (the speed loss turns
    speed x interval into metres; a 30 fps video at the KITTI default 0.1 s is 3x off)."""
    summary = sequence_cache.read_summary(config.data.root)
    if summary is None or not config.data.get("load_velocity"):
        return []
    problems = []
    stride, interval = summary["settings"]["stride"], config.data.get("frame_interval")
    for s in summary["sequences"]:
        if not s["speed"]:
            stem = os.path.splitext(s["source"])[0] if s["kind"] == "video" else s["source"]
            problems.append(Problem(s["source"], "config.data.load_velocity=True but there is no "
                                    f"speed file {stem}.speed.csv ('frame index, speed in m/s')"))
        if s["fps"] and interval and abs(interval * s["fps"] / stride - 1) > 0.01:
            problems.append(Problem("config.data.frame_interval", f"{interval:g} s, but "
                                    f"{s['source']} runs at {s['fps']:.4g} fps with stride "
                                    f"{stride}: set it to {stride / s['fps']:.6g}"))
    return problems


def file_problems(config) -> list[Problem]:
    """Files the config points at outside the data root."""
    problems = []
    spec = config.model.get("encoder_init")
    try:
        kind, path = encoder_init.parse(spec)
        if path and not os.path.isfile(path):
            problems.append(Problem("config.model.encoder_init", f"{path}: {kind} weights not found"))
    except ValueError as exc:
        problems.append(Problem("config.model.encoder_init", str(exc)))
    distill = config.get("distill")
    teacher = distill.get("teacher_workdir") if distill is not None else None
    if teacher:
        if not os.path.exists(os.path.join(teacher, "config.json")):
            problems.append(Problem("config.distill.teacher_workdir",
                                    f"{teacher}: not a jdepth workdir (no config.json)"))
        elif not checkpoint.has_checkpoints(teacher):
            problems.append(Problem("config.distill.teacher_workdir",
                                    f"{teacher}: the teacher's workdir holds no checkpoint"))
    return problems


def run(config, workdir: str, *, allow_config_change: bool = False,
        num_devices: int | None = None, num_processes: int = 1) -> Preflight:
    """The whole validation pass (module docstring); nothing is compiled or trained.

    Args:
      config: the run's config (data paths may be unresolved).
      workdir: the run's folder (created if missing; nothing else is written).
      allow_config_change: accept a config that differs from the workdir's config.json.
      num_devices: devices the batch is split over (None: not checked).
      num_processes: processes of the run (jax.process_count()).

    Returns:
      Preflight.

    Raises:
      ValidationError: listing every problem found.
    """
    problems = config_check.value_problems(config, num_devices, num_processes)
    problems += workdir_problems(workdir)
    problems += file_problems(config)
    d = config.data
    synthetic = bool(d.get("synthetic") and d.synthetic.to_dict())
    if not d.get("root") and not synthetic and not datasets.uses_sequences(config):
        raise ValidationError(problems + [Problem("config.data.root", "not set: pass "
                              "--config.data.root=/path/to/kitti_raw (or use configs/demo.py, "
                              "which generates synthetic data, or configs/video.py with "
                              "--config.data.sequences.path=VIDEO_OR_FOLDER)")])
    if problems and not datasets.data_ready(config):
        raise ValidationError(problems)  # before minutes of generating or decoding data
    try:
        config = datasets.resolve_data(config, workdir)
    except ValidationError as exc:  # the sequences' own problems, listed with the others
        raise ValidationError(problems + exc.problems) from exc
    problems += sequence_problems(config)
    report = check_data(config.data.root, data_specs(config, workdir))
    problems += report.problems
    n_train, batch = report.frames.get("train", 0), config.train.batch_size
    if n_train and isinstance(batch, int) and 0 < n_train < batch:
        problems.append(Problem(config.data.train_split, f"{n_train} training frames, fewer than "
                                f"one batch (config.train.batch_size={batch})"))
    change_problems, changes, path_changes = config_change_problems(
        workdir, config, allow_config_change)
    problems += change_problems
    if problems:
        raise ValidationError(problems)
    return Preflight(config, report, changes, path_changes)
