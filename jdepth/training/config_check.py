"""Config checks that run before anything is built: value ranges, unknown override keys, changes
against a workdir's config.

Each check returns `validate.Problem`s naming the config key (`config.optim.lr`), so one
`ValidationError` can list every problem of a run at once. A rule applies only where its key
exists: recipes add sections (manydepth, distill, panoptic, ...) that others lack.
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Callable, Iterable, Mapping

from jdepth.data.validate import Problem

PARALLEL_MODES = ("pmap", "jit")
ON_MISSING = ("raise", "clamp")
IMAGE_EXTS = (None, "png", "jpg")
# Evaluation ground truth, both scored with the Eigen protocol (Garg crop, depth within 80 m):
# velodyne scans, or dense depth PNGs (proj_depth/groundtruth: exact on the synthetic set, as
# jdepth/eval/regions.py); none (no evaluation); 'auto' (own sequences): dense when known.
GT_KINDS = ("velodyne", "dense", "none", "auto")
HOLDOUTS = ("auto", "sequences", "ranges")
# The encoders halve the resolution five times and the decoders add skips back at every level.
RESOLUTION_MULTIPLE = 32


def _int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _num(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda x: _int(x) and x >= low


def _num_in(low: float, high: float, *, low_open=False, high_open=False) -> Callable[[Any], bool]:
    def ok(x):
        if not _num(x):
            return False
        above = x > low if low_open else x >= low
        below = x < high if high_open else x <= high
        return above and below
    return ok


_POSITIVE = _num_in(0.0, math.inf, low_open=True, high_open=True)
_NON_NEGATIVE = _num_in(0.0, math.inf, high_open=True)
_UNIT = _num_in(0.0, 1.0)

# (key, predicate, what the value must be). Keys absent from a config are skipped.
RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", _int, "an integer"),
    ("data.height", lambda x: _int(x) and x > 0 and x % RESOLUTION_MULTIPLE == 0,
     f"a positive multiple of {RESOLUTION_MULTIPLE}"),
    ("data.width", lambda x: _int(x) and x > 0 and x % RESOLUTION_MULTIPLE == 0,
     f"a positive multiple of {RESOLUTION_MULTIPLE}"),
    ("data.frame_ids", lambda x: isinstance(x, (tuple, list)) and len(x) >= 2
     and all(_int(f) for f in x) and x[0] == 0 and len(set(x)) == len(x),
     "distinct integers starting with 0, e.g. (0, -1, 1)"),
    ("data.on_missing", lambda x: x in ON_MISSING, f"one of {ON_MISSING}"),
    ("data.img_ext", lambda x: x in IMAGE_EXTS, "None (auto-detect), 'png' or 'jpg'"),
    ("data.num_workers", _int_at_least(0), "an integer >= 0"),
    ("data.frame_cache_mb", _int_at_least(0), "an integer >= 0"),
    ("data.frame_interval", _POSITIVE, "a positive number of seconds"),
    ("data.gt_kind", lambda x: x in GT_KINDS, f"one of {GT_KINDS}"),
    ("data.sequences.stride", _int_at_least(1), "an integer >= 1"),
    ("data.sequences.static_threshold", _NON_NEGATIVE, "a number >= 0 (0: keep every frame)"),
    ("data.sequences.holdout", lambda x: x in HOLDOUTS, f"one of {HOLDOUTS}"),
    ("data.sequences.val_fraction", _num_in(0.0, 1.0, high_open=True), "in [0, 1)"),
    ("data.sequences.test_fraction", _num_in(0.0, 1.0, high_open=True), "in [0, 1)"),
    ("model.min_depth", _POSITIVE, "a positive number"),
    ("model.max_depth", _POSITIVE, "a positive number"),
    ("model.scales", lambda x: isinstance(x, (tuple, list)) and len(x) >= 1
     and list(x) == list(range(len(x))), "consecutive scales from 0, e.g. (0, 1, 2, 3)"),
    ("loss.ssim_weight", _UNIT, "in [0, 1]"),
    ("loss.smoothness_weight", _NON_NEGATIVE, "a number >= 0"),
    ("loss.automask_start_step", _int_at_least(0), "an integer >= 0"),
    ("loss.velocity_weight", _NON_NEGATIVE, "a number >= 0"),
    ("optim.lr", _POSITIVE, "a positive finite number"),
    ("optim.b1", _num_in(0.0, 1.0, high_open=True), "in [0, 1)"),
    ("optim.b2", _num_in(0.0, 1.0, high_open=True), "in [0, 1)"),
    ("optim.decay_epochs", lambda x: isinstance(x, (tuple, list))
     and all(_int(e) and e >= 0 for e in x), "a tuple of epoch numbers >= 0"),
    ("optim.decay_factor", _num_in(0.0, 1.0, low_open=True), "in (0, 1]"),
    ("optim.warmup_steps", _int_at_least(0), "an integer >= 0"),
    ("optim.grad_clip_norm", _NON_NEGATIVE, "a number >= 0 (0: off)"),
    ("optim.hold_depth_steps", _int_at_least(0), "an integer >= 0"),
    ("optim.pose_lr_scale", _POSITIVE, "a positive number"),
    ("optim.scale_lr_scale", _POSITIVE, "a positive number"),
    ("train.batch_size", _int_at_least(1), "an integer >= 1"),
    ("train.num_epochs", _int_at_least(1), "an integer >= 1"),
    ("train.max_steps", _int_at_least(0), "an integer >= 0 (0: use num_epochs)"),
    ("train.parallel", lambda x: x in PARALLEL_MODES, f"one of {PARALLEL_MODES}"),
    ("train.log_every", _int_at_least(1), "an integer >= 1"),
    ("train.ckpt_every_steps", _int_at_least(1), "an integer >= 1"),
    ("train.max_to_keep", _int_at_least(1), "an integer >= 1"),
    ("train.max_skipped_steps", _int_at_least(0), "an integer >= 0"),
    ("train.eval_every_epochs", _int_at_least(0), "an integer >= 0 (0: no periodic evaluation)"),
    ("train.eval_max_images", _int_at_least(0), "an integer >= 0 (0: the whole split)"),
)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a.b.c': leaf} of a nested mapping (ConfigDict or the dict of a config.json)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            value = value.to_dict() if hasattr(value, "to_dict") else value
            nested = flatten(value, f"{prefix}{key}.")
            flat.update(nested if nested else {f"{prefix}{key}": {}})
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def value_problems(config, num_devices: int | None = None,
                   num_processes: int = 1) -> list[Problem]:
    """Every config value outside its range (`RULES`), plus the rules that tie two values.

    Args:
      config: the run's ConfigDict.
      num_devices: device count the global batch is split over (None: not checked).
      num_processes: processes of the run; several need `train.parallel=jit` and a batch that
        divides over them (each reads its own rows of it).
    """
    flat = flatten(config)
    problems = []
    for key, ok, expected in RULES:
        if key in flat and not ok(flat[key]):
            problems.append(Problem(f"config.{key}", f"must be {expected}, got {flat[key]!r}"))
    nonfinite = sorted(k for k, v in flat.items() if isinstance(v, float) and not math.isfinite(v))
    problems += [Problem(f"config.{k}", f"is not finite ({flat[k]!r})")
                 for k in nonfinite if not any(k == rule[0] for rule in RULES)]
    lo, hi = flat.get("model.min_depth"), flat.get("model.max_depth")
    if _num(lo) and _num(hi) and lo >= hi:
        problems.append(Problem("config.model.max_depth",
                                f"must exceed model.min_depth ({hi!r} <= {lo!r})"))
    if _num(flat.get("loss.velocity_weight")) and flat["loss.velocity_weight"] > 0 \
            and not flat.get("data.load_velocity"):
        problems.append(Problem("config.loss.velocity_weight",
                                "> 0 needs config.data.load_velocity=True (the oxts speeds)"))
    if flat.get("data.sequences.path") and flat.get("data.root"):
        problems.append(Problem("config.data.sequences.path", "and config.data.root are both "
                                "set: use one data source (your sequences or a KITTI root)"))
    fractions = [flat.get(f"data.sequences.{k}_fraction") for k in ("val", "test")]
    if all(_num(f) for f in fractions) and sum(fractions) >= 1:
        problems.append(Problem("config.data.sequences.test_fraction",
                                f"val and test fractions sum to {sum(fractions):g}: nothing "
                                "left for training"))
    batch = flat.get("train.batch_size")
    if num_devices and _int(batch) and batch > 0 and batch % num_devices:
        problems.append(Problem("config.train.batch_size", f"{batch} does not divide over the "
                                f"{num_devices} devices (config.train.parallel)"))
    if num_processes > 1:
        if flat.get("train.parallel") != "jit":
            problems.append(Problem("config.train.parallel", f"must be 'jit' in a run of "
                                    f"{num_processes} processes (pmap runs on one host), got "
                                    f"{flat.get('train.parallel')!r}"))
        if _int(batch) and batch > 0 and batch % num_processes:
            problems.append(Problem("config.train.batch_size", f"{batch} does not divide over "
                                    f"the {num_processes} processes"))
    return problems


def is_valid(config, key: str) -> bool:
    """Whether `key` exists in `config` and passes its rule in `RULES`."""
    flat = flatten(config)
    return key in flat and all(ok(flat[key]) for k, ok, _ in RULES if k == key)


def closest_keys(key: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """The valid keys most like `key`: by the whole dotted key, then by its last part."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=n, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        close = [by_leaf[k] for k in difflib.get_close_matches(leaf, list(by_leaf), n=n)]
    return close


def unknown_key_problems(config, keys: Iterable[str]) -> list[Problem]:
    """One problem per override key (dotted, without 'config.') the config does not have."""
    flat = flatten(config)
    prefixes = {k.rsplit(".", i)[0] for k in flat for i in range(1, k.count(".") + 1)}
    problems = []
    for key in keys:
        if key in flat or key in prefixes:
            continue
        close = closest_keys(key, flat)
        hint = f"; closest: {', '.join(close)}" if close else ""
        problems.append(Problem(f"config.{key}", f"unknown config key{hint}"))
    return problems


def override_keys(argv: Iterable[str], flag: str = "config") -> list[str]:
    """Dotted keys of `--config.a.b=v`, `--config.a.b v` and `--[no]config.a.b` in `argv`."""
    keys = []
    for arg in argv:
        if arg == "--":
            break
        name = arg.lstrip("-").split("=", 1)[0] if arg.startswith("--") else None
        if not name:
            continue
        if name.startswith(f"no{flag}."):
            name = name[2:]
        if name.startswith(f"{flag}."):
            keys.append(name[len(flag) + 1:])
    return keys


def config_file_arg(argv: list[str], flag: str = "config") -> str | None:
    """The value of `--config=FILE[:arg]` or `--config FILE[:arg]` in `argv`."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
        if arg == f"--{flag}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


# Keys that change neither what is trained nor how: free to differ on resume.
FREE_KEYS = frozenset({
    "data.frame_cache_mb", "data.cache_dir", "train.progress_bar", "train.log_every",
    "train.eval_every_epochs", "train.eval_max_images", "train.max_to_keep",
    "train.ckpt_every_steps",
    # The process layout: a run may resume on another process count (same global batch).
    "distributed.coordinator_address", "distributed.num_processes", "distributed.process_id",
    "distributed.local_device_ids", "distributed.auto_detect",
    "distributed.shutdown_timeout_seconds",
})
# Where the data lives may change between machines (the split contents are checked separately).
PATH_KEYS = frozenset({
    "data.root", "data.sequences.path", "data.split_dir", "data.train_split", "data.val_split",
    "data.test_split",
})


def changed_keys(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) of every leaf that differs; a missing leaf is `<absent>`.

    Tuples and lists compare equal (a config.json stores tuples as lists).
    """
    a, b = flatten(old), flatten(new)
    missing = "<absent>"

    def norm(v):
        return list(v) if isinstance(v, tuple) else v

    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if norm(a.get(k, missing)) != norm(b.get(k, missing))]


def format_changes(changes: Iterable[tuple[str, Any, Any]]) -> str:
    """`optim.pose_lr_scale 10.0 -> 1.0, train.max_steps 0 -> 500` (one line)."""
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes)
