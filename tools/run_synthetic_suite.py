"""Trains every recipe on one synthetic dataset with the same budget and seed; writes RESULTS.md.

  python tools/run_synthetic_suite.py [--runs runs/suite] [--only demo,demo_issl] \
      [--results RESULTS.md] [--figure docs/synthetic_suite.png]

Each entry of SUITE is a config file (all demo-sized: 192x64, batch 8, the same epochs, seed and
synthetic set) and the workdir it trains in; an entry with a `start` fine-tunes the finished runs
of earlier entries instead (tools/make_start.py assembles the weights into {runs}/starts/). A run
that already finished is not trained again and a killed one resumes (the train command resumes by
itself), so the suite can be stopped and restarted at will. Then every run is evaluated the same
way:

  * the test-split table of the train command (Eigen velodyne protocol, median-scaled), next to
    the "average training depth map" baseline;
  * jdepth/eval/regions.py with the exact dense depth: all pixels, independently moving cars,
    a 3-pixel band around thing-instance edges and the static background (stuff pixels; AbsRel);
  * for absolute-depth recipes, the same without median scaling, and for Student-II the scale
    head's gamma over the test frames (mean, standard deviation, range);
  * PQ (things / stuff) for runs with the panoptic head;
  * the wall time of each run.

RESULTS.md gets one table per metric family and the figure (input, exact depth, each recipe's
depth for a few test frames); JSON with every number goes next to it (`--json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import make_start  # the fine-tune settings its started entries share with the protocol

from jdepth.colormap import colorize  # noqa: E402
from jdepth.data import kitti  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # the workdir name and the table row
    config: str  # configs/<config>.py
    what: str
    overrides: tuple[str, ...] = ()
    ablation: bool = False  # in the tables, not in the figure
    # NET=WORKDIR:SOURCE takes of tools/make_start.py ("{runs}" is the suite's runs folder): the
    # run starts from those finished runs' weights instead of scratch.
    start: tuple[str, ...] = ()


REGIONS = ("all", "moving", "edge_band", "static")  # jdepth/eval/regions.py
_PAPER_WEIGHTS = ("--config.panoptic.weight=0.35", "--config.contrastive.weight=0.1")
# Outputs starting near metric values (jdepth/training/metric_init.py): depth 10 m, translation in
# metres. With the reference's parametrisation (depth 0.2 and translation 0.01 x the decoder at
# step 0) a run whose ego translation grows slowly pushes near pixels onto the min_depth floor.
_METRIC_INIT = ("--config.model.init_depth=10.0", "--config.model.pose_translation_scale=1.0")
# The full recipes fine-tune finished runs for two epochs (86 steps) as the plug-in protocol does;
# a ManyDepth teacher starts trained and frozen.
_FINE_TUNE = make_start.fine_tune_overrides(2)
_FROZEN_TEACHER = make_start.FROZEN_TEACHER
_HRNET_START = ("depth={runs}/hrdepth_pp:depth", "pose={runs}/hrdepth_pp:pose")
_MANYDEPTH_PLUS_START = ("mono={runs}/monodepth2:depth", "pose={runs}/monodepth2:pose",
                         "depth={runs}/hrdepth_pp:depth")


def _motion_prior(weight: float, separate: bool = True, ego_warped: bool = False
                  ) -> tuple[str, ...]:
    """Overrides of a piece-wise run with the small-motion prior (coupled residual motions)."""
    network = ("--config.piecewise.instance_network=separate",) if separate else ()
    view = ("--config.piecewise.instance_input=ego_warped",) if ego_warped else ()
    return ("--config.piecewise.instance_pose=residual_coupled", *network, *view,
            f"--config.piecewise.motion_prior_weight={weight}")


def _depth_prior_pair(name: str, what: str, override: str) -> tuple[Entry, Entry]:
    """Entries of a per-object depth prior at weight 0.1: on the ego-warped piece-wise run with
    motion prior 0.1, and on the thing-masked ego pose alone (no instance poses)."""
    return (
        Entry(f"monodepth2_piecewise_ego_warped_prior_01_{name}", "demo_piecewise",
              f"ablation: as `monodepth2_piecewise_ego_warped_prior_01`, + {what} 0.1",
              _motion_prior(0.1, ego_warped=True) + (override,), ablation=True),
        Entry(f"monodepth2_piecewise_ego_mask_only_{name}", "demo_piecewise",
              f"ablation: as `monodepth2_piecewise_ego_mask_only`, + {what} 0.1",
              ("--config.piecewise.instance_pose=none", override), ablation=True),
    )


_PLUGINS_OFF = ("--config.panoptic.enabled=False", "--config.contrastive.enabled=False",
                "--config.piecewise.enabled=False", "--config.masking.small_objects=False",
                "--config.data.load_panoptic=False")

SUITE = (
    Entry("monodepth2", "demo", "Monodepth2 (ResNet-18, from scratch)"),
    # Run-to-run spread: the same recipe from another seed (init, shuffling, augmentation).
    Entry("monodepth2_seed1", "demo", "ablation: Monodepth2 from seed 1 (the others: seed 0)",
          ("--config.seed=1",), ablation=True),
    Entry("monodepth2_metric_init", "demo",
          "ablation: Monodepth2, outputs starting near metric values (depth 10 m, t in metres)",
          _METRIC_INIT, ablation=True),
    Entry("monodepth2_issl", "demo_issl", "Monodepth2 + ISSL self-samples"),
    Entry("monodepth2_issl_warmup", "demo_issl", "ablation: ISSL from step 129 (epoch 3)",
          ("--config.issl.start_step=129",), ablation=True),
    Entry("manydepth", "manydepth_demo", "ManyDepth (cost volume, t-1), teacher frozen at epoch 5"),
    Entry("manydepth_msff", "manydepth_demo", "ManyDepth + multi-scale feature fusion",
          ("--config.model.msff=True",)),
    # configs/demo_panoptic.py trains the plug-ins at 1/100 of the paper's weights (0.0035, 0.001):
    # from scratch at this budget every heavier setting below costs depth (issue 6).
    Entry("monodepth2_panoptic", "demo_panoptic",
          "Monodepth2 + panoptic head + contrastive loss, at 1/100 of the paper's weights"),
    Entry(
        "monodepth2_panoptic_paper_weights", "demo_panoptic",
        "ablation: panoptic head + contrastive loss at the paper's weights (0.35, 0.1)",
        _PAPER_WEIGHTS, ablation=True),
    Entry("monodepth2_panoptic_head", "demo_panoptic", "ablation: panoptic head only (0.35)",
          ("--config.contrastive.enabled=False", _PAPER_WEIGHTS[0]), ablation=True),
    Entry("monodepth2_contrastive", "demo_panoptic", "ablation: contrastive loss only (0.1)",
          ("--config.panoptic.enabled=False", _PAPER_WEIGHTS[1]), ablation=True),
    Entry("monodepth2_panoptic_w01", "demo_panoptic",
          "ablation: panoptic head + contrastive loss at 1/10 weight (0.035, 0.01)",
          ("--config.panoptic.weight=0.035", "--config.contrastive.weight=0.01"), ablation=True),
    # Warm-up (jdepth/training/plugin_warmup.py): the plug-ins reach the depth net from epoch 3.
    Entry("monodepth2_panoptic_warmup", "demo_panoptic",
          "ablation: paper weights, the plug-ins reaching the depth net from step 129",
          ("--config.panoptic.start_step=129", "--config.contrastive.start_step=129")
          + _PAPER_WEIGHTS, ablation=True),
    # Student-I's network against `monodepth2` (same objective; ResNet-18 vs HRNet-18 + DIFFNet).
    # Its panoptic + contrastive plug-ins are off: at this budget they cost Monodepth2 depth
    # accuracy at the paper's weights (`monodepth2_panoptic_paper_weights`), which would hide the
    # architecture's effect.
    Entry("hrdepth_plus", "hrdepth_plus_demo",
          "HRDepth+ network (Student-I: HRNet-18 + DIFFNet decoder), panoptic plug-ins off",
          _PLUGINS_OFF),
    Entry("monodepth2_piecewise", "demo_piecewise",
          "Monodepth2 + piece-wise pose (one pose per matched car, composed in the warp)"),
    # The instance call predicting the car's whole transform instead of its motion on top of the
    # ego pose (jdepth/training/piecewise.py, `instance_pose`).
    Entry("monodepth2_piecewise_absolute", "demo_piecewise",
          "ablation: piece-wise pose with absolute instance poses",
          ("--config.piecewise.instance_pose=absolute",), ablation=True),
    # No instance poses: what masking the things out of the ego pose net's input alone costs.
    Entry("monodepth2_piecewise_ego_mask_only", "demo_piecewise",
          "ablation: the thing-masked ego pose alone, no instance poses",
          ("--config.piecewise.instance_pose=none",), ablation=True),
    # The same transform as "residual", but the car pixels also train the ego pose through it.
    Entry("monodepth2_piecewise_coupled", "demo_piecewise",
          "ablation: piece-wise pose, the instance pixels' gradient reaching the ego pose",
          ("--config.piecewise.instance_pose=residual_coupled",), ablation=True),
    # Instance pixels train their instance poses but not the depth (the per-object depth / motion
    # trade-off leaves their depth free; `piecewise.instance_depth_gradient`).
    Entry("monodepth2_piecewise_static_depth", "demo_piecewise",
          "ablation: piece-wise pose, depth trained by the static scene only",
          ("--config.piecewise.instance_depth_gradient=False",), ablation=True),
    # Both couplings of the instance branch cut: its own pose net, and no depth gradient from
    # instance pixels. The ego pose and the depth then learn from the static scene only.
    Entry("monodepth2_piecewise_separate_static_depth", "demo_piecewise",
          "ablation: piece-wise pose, separate instance pose net, depth trained by the static "
          "scene only", ("--config.piecewise.instance_network=separate",
                         "--config.piecewise.instance_depth_gradient=False"), ablation=True),
    Entry("monodepth2_piecewise_separate", "demo_piecewise",
          "ablation: piece-wise pose with a separate instance pose network",
          ("--config.piecewise.instance_network=separate",), ablation=True),
    Entry("monodepth2_piecewise_metric_init", "demo_piecewise",
          "ablation: piece-wise pose, outputs starting near metric values (as "
          "`monodepth2_metric_init`)", _METRIC_INIT, ablation=True),
    # A small-motion prior on the residual instance motions (not in the paper; issue 7: free
    # per-object motions of parked cars take away the parallax, jdepth/losses/motion_prior.py).
    Entry("monodepth2_piecewise_motion_prior", "demo_piecewise",
          "ablation: piece-wise pose (coupled residual) + small-motion prior 0.2 on the residuals",
          _motion_prior(0.2, separate=False), ablation=True),
    Entry("monodepth2_piecewise_separate_motion_prior", "demo_piecewise",
          "ablation: as `monodepth2_piecewise_motion_prior`, the instances with their own pose net",
          _motion_prior(0.2), ablation=True),
    Entry("monodepth2_piecewise_separate_motion_prior_005", "demo_piecewise",
          "ablation: as `monodepth2_piecewise_separate_motion_prior`, prior weight 0.05",
          _motion_prior(0.05), ablation=True),
    Entry("monodepth2_piecewise_separate_motion_prior_01", "demo_piecewise",
          "ablation: as `monodepth2_piecewise_separate_motion_prior`, prior weight 0.1",
          _motion_prior(0.1), ablation=True),
    # The instance call on the ego-warped source instance (struct2depth's input), so that it
    # sees the car's motion relative to the camera's (the masked pair shows both mixed).
    Entry("monodepth2_piecewise_ego_warped", "demo_piecewise",
          "ablation: piece-wise pose (coupled residual, own instance net) on ego-warped sources",
          ("--config.piecewise.instance_pose=residual_coupled",
           "--config.piecewise.instance_network=separate",
           "--config.piecewise.instance_input=ego_warped"), ablation=True),
    Entry("monodepth2_piecewise_ego_warped_prior", "demo_piecewise",
          "ablation: as `monodepth2_piecewise_separate_motion_prior`, instance call on ego-warped "
          "sources", _motion_prior(0.2, ego_warped=True), ablation=True),
    Entry("monodepth2_piecewise_ego_warped_prior_01", "demo_piecewise",
          "ablation: as `monodepth2_piecewise_ego_warped_prior`, prior weight 0.1",
          _motion_prior(0.1, ego_warped=True), ablation=True),
    # Per-object depth priors (not in the paper): the object-size prior (jdepth/losses/
    # object_size.py, struct2depth's: cars' depths agree with their image heights) and the
    # ground-contact prior (jdepth/losses/ground_contact.py: a car's base at the road's depth).
    # Each with ego-warped instance poses, and without instance poses as its control.
    *_depth_prior_pair("size", "object-size prior", "--config.piecewise.size_prior_weight=0.1"),
    *_depth_prior_pair("contact", "ground-contact prior",
                       "--config.piecewise.contact_prior_weight=0.1"),
    Entry("monodepth2_piecewise_warmup", "demo_piecewise",
          "ablation: piece-wise pose from step 129 (epoch 3), Monodepth2 steps before",
          ("--config.piecewise.start_step=129",), ablation=True),
    # Stage two of the paper's flow: the student distils the finished `manydepth` run ("{runs}" is
    # the suite's runs folder). That teacher has no speed loss, so its scale, and the student's
    # absolute depth, is arbitrary: the scale ratio is in the absolute-depth table. (With
    # --config.loss.velocity_weight=0.05 the teacher's translation grew only from 0 to 0.016 m of
    # the true ~1 m per frame in 80 steps: the demo budget is too short to make it metric.) The
    # panoptic plug-in is off to halve the student's CPU cost.
    Entry("hrdepth_pp", "hrdepth_pp_demo",
          "HRDepth++ (Student-II: HRNet-18 + scale head), distilled from `manydepth`",
          ("--config.distill.teacher_workdir={runs}/manydepth",) + _PLUGINS_OFF),
    # The Shyam et al. recipes as the paper states them (issue 24): every component on (panoptic
    # head, contrastive loss, small-object masking, piece-wise pose; MSFF in the teacher), the
    # student distilled from the ManyDepth+ teacher as in the paper's two-stage flow. From scratch
    # at this budget the ManyDepth+ twin collapsed (RESULTS.md); the papers start from ImageNet
    # encoders, so these start from finished suite runs (the stand-in, as in issue 23's plug-in
    # protocol): the ResNet nets from `monodepth2`, the HRNet depth net from `hrdepth_pp`'s (trained
    # by the photometric loss alone: the distillation moves only its scale) and fine-tune for
    # _FINE_TUNE epochs; `*_ctrl` rows fine-tune the same start as long with the components off.
    Entry("manydepth_plus", "manydepth_plus_demo",
          "ManyDepth+ (teacher: HRNet-18, MSFF cost volume, panoptic, contrastive, small-object "
          "masking, piece-wise pose), fine-tuned from the start",
          _FINE_TUNE + _FROZEN_TEACHER, start=_MANYDEPTH_PLUS_START),
    Entry("manydepth_plus_ctrl", "manydepth_plus_demo",
          "control: `manydepth_plus` from the same start with the Shyam components off (HRNet "
          "ManyDepth, no MSFF)",
          _FINE_TUNE + _FROZEN_TEACHER + ("--config.model.msff=False",) + _PLUGINS_OFF,
          ablation=True, start=_MANYDEPTH_PLUS_START),
    Entry("hrdepth_plus_full", "hrdepth_plus_demo",
          "HRDepth+ (Student-I) with every component (panoptic, contrastive, small-object "
          "masking, piece-wise pose), fine-tuned from the start", _FINE_TUNE, start=_HRNET_START),
    Entry("hrdepth_plus_ctrl", "hrdepth_plus_demo",
          "control: `hrdepth_plus_full` from the same start with the components off",
          _FINE_TUNE + _PLUGINS_OFF, ablation=True, start=_HRNET_START),
    Entry("hrdepth_pp_full", "hrdepth_pp_demo",
          "HRDepth++ (Student-II) with every component, distilled from `manydepth_plus`",
          _FINE_TUNE + ("--config.distill.teacher_workdir={runs}/manydepth_plus",),
          start=_HRNET_START),
    # The metric two-stage flow (DESIGN.md item 8): the teacher with the speed loss and metric
    # output parametrisation (jdepth/training/metric_init.py), then Student-II distilled from it.
    Entry("manydepth_metric", "manydepth_metric_demo",
          "ManyDepth + speed loss (metric teacher, median-scaled table)"),
    Entry("hrdepth_pp_metric", "hrdepth_pp_metric_demo",
          "HRDepth++ (Student-II) distilled from `manydepth_metric`",
          ("--config.distill.teacher_workdir={runs}/manydepth_metric",)),
    # The paper's L1 on depth sets gamma by the D_s-weighted median ratio, i.e. by the student's
    # farthest pixels; the log-space L1 by the plain median ratio (jdepth/losses/distillation.py).
    Entry("hrdepth_pp_log", "hrdepth_pp_demo",
          "ablation: `hrdepth_pp` with the distillation L1 on log depth",
          ("--config.distill.teacher_workdir={runs}/manydepth", "--config.distill.log_space=True")
          + _PLUGINS_OFF, ablation=True),
    Entry("hrdepth_pp_metric_log", "hrdepth_pp_metric_demo",
          "ablation: `hrdepth_pp_metric` with the distillation L1 on log depth",
          ("--config.distill.teacher_workdir={runs}/manydepth_metric",
           "--config.distill.log_space=True"), ablation=True),
)


def train(entry: Entry, runs: str, log_dir: str) -> dict:
    """Trains (or resumes, or skips) one entry; returns its final test metrics and wall time."""
    workdir = os.path.join(runs, entry.name)
    final = os.path.join(workdir, "eval", "train_final_test_metrics.json")
    timing = os.path.join(workdir, "eval", "suite_wall_seconds.json")
    if not os.path.exists(final):
        cmd = [sys.executable, "-m", "jdepth.train",
               "--config", os.path.join(REPO, "configs", f"{entry.config}.py"),
               "--workdir", workdir, "--config.train.progress_bar=False",
               *(o.replace("{runs}", os.path.abspath(runs)) for o in entry.overrides)]
        if entry.start:
            cmd.append(f"--config.model.encoder_init=params:{start_weights(entry, runs, log_dir)}")
        print(f"[suite] {entry.name}: {' '.join(cmd[1:])}", flush=True)
        start = time.time()
        with open(os.path.join(log_dir, f"{entry.name}.log"), "a") as log:
            proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{entry.name}: training failed, see {log_dir}/{entry.name}.log")
        spent = time.time() - start
        previous = json.load(open(timing))["seconds"] if os.path.exists(timing) else 0.0
        with open(timing, "w") as f:
            json.dump({"seconds": previous + spent}, f)
    with open(final) as f:
        result = json.load(f)
    result["wall_seconds"] = json.load(open(timing))["seconds"] if os.path.exists(timing) else None
    return result


def start_weights(entry: Entry, runs: str, log_dir: str) -> str:
    """The entry's start weights (tools/make_start.py), written once into {runs}/starts/."""
    path = os.path.join(os.path.abspath(runs), "starts", f"{entry.name}.npz")
    if not os.path.exists(path):
        cmd = [sys.executable, os.path.join(REPO, "tools", "make_start.py"),
               "--config", os.path.join(REPO, "configs", f"{entry.config}.py"), "--out", path]
        for take in entry.start:
            cmd += ["--take", take.replace("{runs}", os.path.abspath(runs))]
        cmd += [f"--set={o.replace('{runs}', os.path.abspath(runs))}" for o in entry.overrides]
        with open(os.path.join(log_dir, f"{entry.name}.log"), "a") as log:
            if subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"{entry.name}: no start weights, see {log_dir}/{entry.name}.log")
    return path


def evaluate(entry: Entry, runs: str) -> dict:
    """Region metrics (dense exact depth) and PQ of a finished run, computed once per run.

    The numbers are kept in the run's eval/suite_eval.json and read back while that file is newer
    than the run's final test metrics, so regenerating RESULTS.md after adding one entry only
    evaluates that entry (a retrained run is evaluated again; a cache without a region of
    REGIONS gets its region metrics again, nothing else).
    """
    workdir = os.path.join(runs, entry.name)
    cache = os.path.join(workdir, "eval", "suite_eval.json")
    final = os.path.join(workdir, "eval", "train_final_test_metrics.json")
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(final):
        with open(cache) as f:
            out = json.load(f)
        scale_missing = "regions_absolute" in out and "scale" not in out  # an older cache
        if set(REGIONS) <= set(out["regions"]) and not scale_missing:
            return out
        out.update(_evaluate_regions(workdir))  # a region added since: only regions again
    else:
        out = _evaluate(workdir)
    with open(cache, "w") as f:
        json.dump(out, f, indent=1, default=float)
    return out


def _evaluate(workdir: str) -> dict:
    from jdepth.inference import DepthPredictor
    from jdepth.training import panoptic as panoptic_plugin

    predictor = DepthPredictor.from_workdir(workdir)
    config = predictor.config
    out = _evaluate_regions(workdir, predictor)
    out["panoptic"] = panoptic_plugin.predictor_panoptic_quality(predictor,
                                                                 config.data.test_split)
    if config.recipe == "manydepth":
        out["cost_volume"] = cost_volume_accuracy(workdir)
    return out


def _evaluate_regions(workdir: str, predictor=None) -> dict:
    from jdepth.eval import regions
    from jdepth.inference import DepthPredictor

    predictor = predictor or DepthPredictor.from_workdir(workdir)
    root, split = predictor.config.data.root, predictor.config.data.test_split
    out = {"regions": regions.evaluate_regions(predictor, root, split, gt_kind="dense",
                                               median_scaling=True)}
    if predictor.absolute:
        out["regions_absolute"] = regions.evaluate_regions(
            predictor, root, split, gt_kind="dense", median_scaling=False)
    if predictor.config.model.get("scale_head", False):
        out["scale"] = scale_statistics(predictor, root, kitti.read_split_file(split))
    return out


def scale_statistics(predictor, root: str, refs, batch_size: int = 8) -> dict:
    """Student-II's gamma over the frames `refs`: mean, std, min, max (and the frame count).

    The paper's factor is one global scale for a monocular video; the spread over a drive's
    frames says how close the per-image head comes to that.
    """
    import jax
    import jax.numpy as jnp

    from jdepth.eval import depth_eval
    from jdepth.training import student

    config = predictor.config
    networks = predictor.recipe.build_networks(config, bn_axis_name=None)
    scale = jax.jit(lambda params, stats, images: student.predict_scale(
        params, stats, images, networks=networks, config=config))
    gammas = []
    for start in range(0, len(refs), batch_size):
        chunk = depth_eval.load_split_images(root, refs[start:start + batch_size])
        images = np.stack([predictor.preprocess(im) for im in chunk])
        n = len(images)
        if n < batch_size:  # pad: one compiled shape
            images = np.concatenate([images, np.repeat(images[-1:], batch_size - n, 0)])
        out = scale(predictor.params, predictor.batch_stats, jnp.asarray(images))
        gammas.append(np.asarray(out)[:n])
    gamma = np.concatenate(gammas).astype(np.float64)
    return {"gamma_mean": float(gamma.mean()), "gamma_std": float(gamma.std()),
            "gamma_min": float(gamma.min()), "gamma_max": float(gamma.max()),
            "frames": int(gamma.size)}


def cost_volume_accuracy(workdir: str) -> dict:
    """tools/cost_volume_accuracy.py's numbers for a multi-frame run (computed once, then read)."""
    path = os.path.join(workdir, "eval", "cost_volume_accuracy.json")
    if not os.path.exists(path):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "cost_volume_accuracy.py"),
                        "--workdir", workdir, "--json", path], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL,
                       # A script's own folder is its import path, not cwd: name the repo, so
                       # a checkout without `pip install -e .` runs it too.
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           filter(None, (REPO, os.environ.get("PYTHONPATH"))))})
    with open(path) as f:
        return json.load(f)


def baseline_regions(entry: Entry, runs: str) -> dict:
    """Region metrics of the "average training depth map" baseline, scored like the runs."""
    from jdepth.eval import depth_eval, regions
    from jdepth.training import checkpoint

    config = checkpoint.load_config(os.path.join(runs, entry.name))
    root = config.data.root
    depth_map = depth_eval.mean_depth_map(
        root, kitti.read_split_file(config.data.train_split), config.data.height,
        config.data.width)
    return regions.evaluate_regions(depth_eval.ConstantDepthPredictor(depth_map), root,
                                    config.data.test_split, gt_kind="dense", median_scaling=True)


def figure(entries, runs: str, path: str, frames=(5, 25, 45)) -> None:
    """Rows: test frames; columns: input, exact depth, each recipe's depth (colour-mapped)."""
    from jdepth.eval import depth_eval
    from jdepth.inference import DepthPredictor

    first = DepthPredictor.from_workdir(os.path.join(runs, entries[0].name))
    root = first.config.data.root
    refs = kitti.read_split_file(first.config.data.test_split)
    refs = [refs[i] for i in frames if i < len(refs)]
    h, w = first.height, first.width
    images = [kitti.load_image(kitti.image_path(root, r)) for r in refs]
    columns = [[np.asarray(Image.fromarray(im).resize((w, h))) for im in images]]
    exact = []
    for r in refs:
        depth = kitti.load_benchmark_depth(kitti.benchmark_gt_path(root, r))
        disp = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-3), 0.0)
        exact.append(np.asarray(Image.fromarray(colorize(disp)).resize((w, h), Image.NEAREST)))
    columns.append(exact)
    for entry in entries:
        predictor = DepthPredictor.from_workdir(os.path.join(runs, entry.name))
        disps = depth_eval.predict_split(predictor, root, refs)
        columns.append([colorize(d) for d in disps])
    rows = [np.concatenate([col[i] for col in columns], axis=1) for i in range(len(refs))]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def _fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def write_results(entries, results: dict, baseline: dict, path: str,
                  figure_path: str | None, recorded: tuple[str, ...] = ()) -> None:
    first = results[entries[0].name]
    base = first["train"].get("baseline_mean_depth", {})
    lines = [
        "# Results on the synthetic KITTI set",
        "",
        "Written by `python tools/run_synthetic_suite.py` (do not edit by hand). Every recipe is "
        "trained from scratch with its demo config: the same synthetic drives, 192x64, batch 8, "
        "the same number of epochs and the same seed; rows \"fine-tuned from the start\" (and "
        "their controls) instead fine-tune earlier rows' runs for 2 epochs (tools/make_start.py). "
        "Test split: one held-out drive. "
        "`wall` is the training time on the machine that ran the suite (a 2-core CPU here, "
        "often shared by two to four of these runs at once: compare CPU cost with "
        "tools/benchmark.py, not with this column).",
        "",
        "## Test split, Eigen protocol (velodyne GT, Garg crop, median scaling)",
        "",
        "| recipe | what | abs_rel | sq_rel | rmse | rmse_log | a1 | a2 | a3 | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
    for e in entries:
        r = results[e.name]["train"]
        wall = r.get("wall_seconds")
        what = e.what + (" (**absolute depth**, no median scaling)"
                         if results[e.name]["eval"].get("regions_absolute") else "")
        lines.append(f"| `{e.name}` | {what} | " + " | ".join(_fmt(r[k]) for k in keys)
                     + f" | {'-' if wall is None else f'{wall / 60:.0f} min'} |")
    if base:
        lines.append("| baseline | the average training depth map, every image | "
                     + " | ".join(_fmt(base[k]) for k in keys) + " | - |")
    walls = [results[e.name]["train"].get("wall_seconds") for e in entries]
    if all(w is not None for w in walls):
        lines += ["", f"Training all {len(entries)} runs took {sum(walls) / 3600:.1f} h of wall "
                      "time in total (the sum of the `wall` column; evaluation adds a few "
                      "minutes)."]
    if recorded:
        lines += ["", f"{len(recorded)} of the {len(entries)} rows are recorded numbers of earlier "
                      "runs of this tool (`--recorded`), possibly from another machine: reruns "
                      "there differ by about the seed spread."]
    lines += [
        "",
        "## AbsRel by region (exact dense depth, median scaling)",
        "",
        "`moving`: pixels of independently moving cars; `edge_band`: within 3 px of a "
        "thing-instance edge; `static`: stuff pixels, the background without any car "
        "(jdepth/eval/regions.py).",
        "",
        "| recipe | " + " | ".join(REGIONS) + " |",
        "|---|" + "---|" * len(REGIONS),
    ]
    for e in entries:
        reg = results[e.name]["eval"]["regions"]
        lines.append(f"| `{e.name}` | " + " | ".join(
            _fmt(reg.get(k, {}).get("abs_rel")) for k in REGIONS) + " |")
    lines.append("| baseline | " + " | ".join(
        _fmt(baseline.get(k, {}).get("abs_rel")) for k in REGIONS) + " |")
    absolute = [e for e in entries if "regions_absolute" in results[e.name]["eval"]]
    if absolute:
        lines += ["", "## Absolute depth (no median scaling)", "",
                  "Exact dense depth, all pixels: the prediction as it is against the same "
                  "prediction median-scaled per image. The scale ratio is median(GT) / "
                  "median(prediction) per image (1 = metric). gamma: the scale head's output "
                  "over the test frames, mean and standard deviation ('-': not recorded).", "",
                  "| recipe | abs_rel absolute | a1 absolute | abs_rel median-scaled | "
                  "scale ratio (median) | std | gamma mean | gamma std |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in absolute:
            a = results[e.name]["eval"]["regions_absolute"]["all"]
            m = results[e.name]["eval"]["regions"]["all"]
            g = results[e.name]["eval"].get("scale", {})
            lines.append(f"| `{e.name}` | {_fmt(a['abs_rel'])} | {_fmt(a['a1'])} | "
                         f"{_fmt(m['abs_rel'])} | {_fmt(a['scale_ratio_median'])} | "
                         f"{_fmt(a['scale_ratio_std'])} | {_fmt(g.get('gamma_mean'))} | "
                         f"{_fmt(g.get('gamma_std'))} |")
    matching = [e for e in entries if results[e.name]["eval"].get("cost_volume")]
    if matching:
        lines += ["", "## Cost volume (tools/cost_volume_accuracy.py)", "",
                  "Argmin depth of the trained cost volume against the exact depth on its "
                  "confident pixels (median-scaled per image), and what the exact geometry allows: "
                  "how far a 10% depth error moves a pixel's projection in frame t-1, in matching "
                  "pixels.", "",
                  "| recipe | within 10% | abs_rel | confident | median shift of a 10% error (px) "
                  "| pixels shifted >= 0.5 px |", "|---|---|---|---|---|---|"]
        for e in matching:
            c = results[e.name]["eval"]["cost_volume"]
            g = c.get("exact_geometry", {})
            lines.append(f"| `{e.name}` | {_fmt(c.get('fraction_within_0.1'))} | "
                         f"{_fmt(c.get('abs_rel'))} | {_fmt(c.get('confident_fraction'))} | "
                         f"{_fmt(g.get('median_shift_of_0.1_depth_error_matching_px'))} | "
                         f"{_fmt(g.get('fraction_shift_at_least_half_a_matching_px'))} |")
    panoptic = [e for e in entries if results[e.name]["eval"]["panoptic"]]
    if panoptic:
        lines += ["", "## Panoptic quality (test split, exact labels)", "",
                  "| recipe | PQ | SQ | RQ | PQ things | PQ stuff |", "|---|---|---|---|---|---|"]
        for e in panoptic:
            p = results[e.name]["eval"]["panoptic"]
            lines.append(f"| `{e.name}` | " + " | ".join(
                _fmt(p[k], 1) for k in ("pq", "sq", "rq", "pq_things", "pq_stuff")) + " |")
    if figure_path:
        rel = os.path.relpath(figure_path, os.path.dirname(os.path.abspath(path)))
        lines += ["", "## Test frames", "",
                  "Columns: input, exact depth, then "
                  + ", ".join(f"`{e.name}`" for e in entries if not e.ablation)
                  + " (disparity, colour-mapped per image; the figure is redrawn only when every one "
                  "of them has a run folder, so it may lack the newest).", "", f"![suite]({rel})"]
    text = "\n".join(lines) + "\n"
    if os.path.exists(path):
        with open(path) as f:
            text = with_kept_blocks(text, f.read())
    with open(path, "w") as f:
        f.write(text)


# Other tools' and hand-written blocks of the page: `<!-- NAME:begin ... -->` to `<!-- NAME:end -->`.
_BLOCK = re.compile(r"<!-- ([\w-]+):begin[^>]*-->.*?<!-- \1:end -->", re.DOTALL)
_FIRST_TABLE = "## Test split"


def with_kept_blocks(page: str, old_page: str) -> str:
    """The suite's new `page` with the marked blocks of `old_page` kept where they were: those
    above the suite's first table stay under the title, the others after the suite's tables."""
    first = old_page.find(_FIRST_TABLE)
    top, bottom = [], []
    for match in _BLOCK.finditer(old_page):
        (top if 0 <= match.start() < first else bottom).append(match.group(0))
    if top:
        title, sep, rest = page.partition("\n\n")
        page = title + sep + "\n\n".join(top) + "\n\n" + rest
    if bottom:
        page = page.rstrip("\n") + "\n\n" + "\n\n".join(bottom) + "\n"
    return page


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", default=os.path.join(REPO, "runs", "suite"))
    parser.add_argument("--only", default=None, help="comma-separated entry names")
    parser.add_argument("--results", default=os.path.join(REPO, "RESULTS.md"))
    parser.add_argument("--json", default=None, help="default: next to --results")
    parser.add_argument("--figure", default=os.path.join(REPO, "docs", "synthetic_suite.png"))
    parser.add_argument("--no_figure", action="store_true")
    parser.add_argument("--recorded", default=None,
                        help="a RESULTS.json: an entry without a run folder under --runs takes "
                             "its numbers from it instead of training (runs/ is not committed)")
    args = parser.parse_args(argv)

    entries = list(SUITE)
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {e.name for e in SUITE})
        if unknown:
            parser.error(f"unknown suite entries {unknown}; known: {[e.name for e in SUITE]}")
        entries = [e for e in SUITE if e.name in names]
    os.makedirs(args.runs, exist_ok=True)
    start = time.time()
    recorded = {}
    if args.recorded:
        with open(args.recorded) as f:
            recorded = json.load(f)
    results = {}
    present = [e for e in entries if os.path.isdir(os.path.join(args.runs, e.name))]
    for entry in entries:
        if entry not in present and entry.name in recorded.get("results", {}):
            results[entry.name] = recorded["results"][entry.name]
            print(f"[suite] {entry.name}: recorded numbers from {args.recorded}", flush=True)
        else:
            results[entry.name] = {"train": train(entry, args.runs, args.runs)}
            results[entry.name]["eval"] = evaluate(entry, args.runs)
    present = [e for e in entries if os.path.isdir(os.path.join(args.runs, e.name))]
    baseline = (baseline_regions(present[0], args.runs) if present
                else recorded["baseline_regions"])
    figure_path = None if args.no_figure else args.figure
    shown = [e for e in entries if not e.ablation]
    if figure_path and all(e in present for e in shown):
        figure(shown, args.runs, figure_path)
    elif figure_path:  # recorded entries have numbers, not depth maps: keep the drawn figure
        print(f"[suite] {figure_path} kept as it is: not every shown entry has a run folder")
    write_results(entries, results, baseline, args.results, figure_path,
                  tuple(e.name for e in entries if e not in present))
    json_path = args.json or os.path.splitext(args.results)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump({"suite_seconds": time.time() - start, "results": results,
                   "baseline_regions": baseline}, f, indent=1, default=float)
    print(f"[suite] wrote {args.results} and {json_path} in {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
