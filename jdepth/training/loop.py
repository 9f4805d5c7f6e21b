"""`train_and_evaluate(config, workdir)`: the training loop shared by every recipe.

Sections: validation (jdepth/training/preflight.py: every input checked before anything is
built), data, model and optimizer, resume, loop (step, log, NaN check, checkpoint, periodic eval),
final evaluation. Recipe specifics live in the recipe's module (see training/recipes.py). Each
phase that takes long prints one line as it starts, so a run is never silent for minutes.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jdepth.colormap import colorize
from jdepth.data import pipeline
from jdepth.eval import depth_eval
from jdepth.eval.metrics import format_metrics_table
from jdepth.inference import DepthPredictor
from jdepth.training import checkpoint, collapse, config_check, plugins, preflight, recipes
from jdepth.training import parallel as parallel_lib
from jdepth.training.parallel import DataParallel
from jdepth.training.state import TrainState, make_optimizer, param_count
from jdepth.training.summary import SummaryWriter

log = logging.getLogger("jdepth")


class NonFiniteLossError(FloatingPointError):
    """Raised when a logged loss term is NaN or infinite; no checkpoint of that state is written."""


def pipeline_config(config) -> pipeline.PipelineConfig:
    d = config.data
    return pipeline.PipelineConfig(
        root=d.root,
        height=d.height,
        width=d.width,
        frame_ids=tuple(d.frame_ids),
        num_scales=len(config.model.scales),
        img_ext=d.get("img_ext"),
        on_missing=d.get("on_missing", "raise"),
        load_panoptic=bool(d.get("load_panoptic", False)),
        load_velocity=bool(d.get("load_velocity", False)),
        frame_cache_mb=int(d.get("frame_cache_mb", 256)),
        **plugins.pipeline_settings(config),
    )


# A skipped update (TrainState.apply_gradients) reports a non-finite gradient norm by design.
_MAY_BE_NONFINITE = ("grad_norm",)


def _check_finite(metrics: dict, step: int, max_skipped: int) -> None:
    bad = sorted(k for k, v in metrics.items()
                 if not math.isfinite(v) and k not in _MAY_BE_NONFINITE)
    if bad:
        raise NonFiniteLossError(
            f"non-finite training metrics at step {step}: {', '.join(bad)}. Training stopped; the "
            "last checkpoint predates this state. Usual causes: learning rate too high, a corrupt "
            "input frame (check the data), or a pose net fine-tuned on tiny data (monodepth2#160)."
        )
    skipped = int(metrics.get("skipped_steps", 0))
    if skipped > max_skipped:
        raise NonFiniteLossError(
            f"{skipped} updates skipped for a non-finite gradient by step {step} (limit "
            f"train.max_skipped_steps={max_skipped}). Training stopped; the last checkpoint "
            "predates this state. A finite loss with a non-finite gradient points at a backward "
            "pass (run one step with JAX_DEBUG_NANS=True from the last checkpoint to find it)."
        )


def _split_gt(config, split: str, workdir: str):
    """Ground truth of split `split`, cached: velodyne scans, or the dense depth PNGs with
    `config.data.gt_kind='dense'` (own sequences with known depth)."""
    kind = "eigen_benchmark" if preflight.gt_kind(config) == "dense" else "eigen"
    return depth_eval.gt_depths_for_split(
        config.data.root, config.data[f"{split}_split"],
        os.path.join(workdir, "eval", f"gt_{split}.npz"), kind=kind)


def evaluate(predictor: DepthPredictor, config, split: str, workdir: str, max_images=None):
    """Metrics of `predictor` on split `split` ('val' or 'test') with cached ground truth, scored
    with the Eigen protocol whatever the ground truth (as jdepth/eval/regions.py scores dense
    depth), so numbers on dense depth read like the velodyne ones."""
    return depth_eval.evaluate_split(
        predictor, config.data.root, config.data[f"{split}_split"],
        _split_gt(config, split, workdir), median_scaling=not predictor.absolute,
        max_images=max_images,
    )


def _depth_images(predictor, batch, frame_ids) -> dict:
    images = batch["images"][:2, 0]
    context = {}
    if predictor.lookup_offsets:  # multi-frame recipes also see their lookup frame
        lookup = frame_ids.index(predictor.lookup_offsets[0])
        context = {"lookup": batch["images"][:2, lookup], "K": batch["K"][:2, 0]}
    disp = predictor.predict_disparity(images, batch_size=len(images), **context)
    # One colour range for the logged images: a flat prediction must look flat.
    lo, hi = float(np.percentile(disp, 2)), float(np.percentile(disp, 98))
    return {f"depth/{i}": np.concatenate([images[i], colorize(disp[i], lo, hi)], 0)
            for i in range(len(images))}


def _say(message: str) -> None:
    """One progress line, flushed at once (the console shows phases as they start); from process
    0 only, so a run of N processes prints each line once."""
    if jax.process_index() == 0:
        print(message, flush=True)


def _restore(ckpt, state, data_iter, changes) -> tuple:
    """Restores the latest checkpoint into `state` and `data_iter`; returns (state, step).

    Raises:
      CheckpointMismatchError: the checkpoint does not fit the state this config builds (e.g.
        `optim.pose_lr_scale` between 1 and another value changes the optimizer's structure);
        the message names the checkpoint and the config changes allowed for this resume.
    """
    model = {"params": state.params, "batch_stats": state.batch_stats, "extra": state.extra}
    opt = {"step": np.int64(0), "opt_state": state.opt_state}
    step = ckpt.latest_step()
    try:
        model, opt, data_state, step = ckpt.restore(model, opt)
        if data_state:
            data_iter.set_state(data_state)
    except Exception as exc:  # orbax and grain raise ValueError, KeyError, TypeError, ...
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        changed = config_check.format_changes(changes) or "none"
        raise checkpoint.CheckpointMismatchError(
            f"{ckpt.directory}/{step}: the checkpoint does not fit the state this config builds "
            f"({type(exc).__name__}: {first_line}). Config changes against the workdir's: "
            f"{changed}. Resume with the workdir's config.json values, or train in a new --workdir."
        ) from exc
    state = state.replace(step=int(opt["step"]), opt_state=opt["opt_state"], **model)
    return state, step


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False) -> dict:
    """Trains (or resumes) the configured recipe in `workdir`; returns the final test metrics.

    Args:
      config: the recipe config.
      workdir: run folder; a workdir with checkpoints resumes from the latest one.
      allow_config_change: resume although `config` differs from the workdir's config.json (the
        old one is kept as config.<time>.json); otherwise such a resume is refused.

    Raises:
      ValidationError: before anything is built, listing every problem with the config, the
        workdir and the data (jdepth/training/preflight.py).
      CheckpointMismatchError, CheckpointWriteError, NonFiniteLossError: see their docstrings.

    With several processes (jax.distributed started by jdepth/training/distributed.py) every
    process calls this with the same config and workdir: each reads its rows of every global batch,
    all take part in the step and in each checkpoint save (orbax writes it once), and process 0
    alone logs, writes config.json and evaluates; the others return {} after training.
    """
    # ---------------------------------------------------------------------------- validation
    _say("validating config, workdir and data ...")
    primary = jax.process_index() == 0
    checked = preflight.run(config, workdir, allow_config_change=allow_config_change,
                            num_devices=parallel_lib.batch_devices(config.train.parallel),
                            num_processes=jax.process_count())
    config, report = checked.config, checked.report
    frames = ", ".join(f"{name} {n}" for name, n in report.frames.items())
    _say(f"  ok: {frames} frames from {report.drives} drives ({report.seconds:.2f} s)")
    if checked.path_changes:
        _say("  data paths differ from the workdir's config.json (allowed): "
             + config_check.format_changes(checked.path_changes))

    # ---------------------------------------------------------------------------------- data
    pcfg = pipeline_config(config)
    n_train = report.frames["train"]
    batch_size = config.train.batch_size
    steps_per_epoch = max(1, n_train // batch_size)
    total_steps = config.train.get("max_steps") or config.train.num_epochs * steps_per_epoch
    user_config = config  # what W/config.json records and the next resume compares with
    config = ml_collections.ConfigDict(config.to_dict())
    # Steps that schedule by epoch (ISSL's rotation range, ManyDepth's teacher freeze) read this.
    config.train.steps_per_epoch = steps_per_epoch

    # ------------------------------------------------------------------ model and optimizer
    _say("building networks ...")
    recipe = recipes.get(config.recipe)
    bn_axis = parallel_lib.AXIS if config.train.parallel == "pmap" else None
    networks = recipe.build_networks(config, bn_axis_name=bn_axis)
    params, batch_stats = recipe.init_variables(
        networks, config, jax.random.PRNGKey(config.seed)
    )
    if hasattr(recipe, "make_optimizer"):  # e.g. ManyDepth's teacher freeze
        tx = recipe.make_optimizer(config, steps_per_epoch)
    else:
        tx = make_optimizer(config.optim, steps_per_epoch)
    state = TrainState.create(params, batch_stats, tx, recipes.init_extra(recipe, config))
    step_fn = functools.partial(recipe.train_step, networks=networks, config=config)
    parallel = DataParallel(step_fn, mode=config.train.parallel)
    log.info("params: %s", {k: param_count(v) for k, v in state.params.items()})

    # ----------------------------------------------------------------------------- resume
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=config.train.max_to_keep)
    # Each process reads its rows of every global batch; the samples and their order do not
    # depend on the process count (pipeline.shard_sliced), so neither do the iterator states.
    ds = pipeline.make_dataset(
        pcfg, config.data.train_split, batch_size=batch_size, seed=config.seed, train=True,
        shard_index=jax.process_index(), shard_count=jax.process_count(),
    )
    data_iter = pipeline.make_iterator(ds, num_workers=config.data.num_workers)
    start_step = 0
    if ckpt.latest_step() is not None:
        state, start_step = _restore(ckpt, state, data_iter, checked.changes)
        log.info("resumed from step %d", start_step)
        _say(f"Resuming {workdir} from step {start_step}")
    # Only now that the checkpoint fits: the workdir keeps describing its checkpoints.
    kept = None
    if primary:
        kept = checkpoint.write_config(workdir, user_config, keep_old=bool(checked.changes))
    if checked.changes:
        _say(f"  config changed against the workdir's (--allow_config_change): "
             f"{config_check.format_changes(checked.changes)}; the old config is kept as {kept}")

    state = parallel.put_state(state)
    rng = parallel.put_rng(jax.random.PRNGKey(config.seed + 1))
    writer = SummaryWriter(workdir, enabled=primary, resume_step=start_step)

    def save(step):
        host = parallel.get_state(state)
        ckpt.save(
            step,
            {"params": host.params, "batch_stats": host.batch_stats, "extra": host.extra},
            {"step": np.int64(host.step), "opt_state": host.opt_state},
            data_iter.get_state(),
        )

    predictor = None

    def predictor_now():
        # One predictor (one compiled forward pass) for every evaluation of the run.
        nonlocal predictor
        host = parallel.get_state(state)
        if predictor is None:
            predictor = DepthPredictor(config, host.params, host.batch_stats, host.extra)
        predictor.params, predictor.batch_stats, predictor.extra = (
            host.params, host.batch_stats, host.extra)
        return predictor

    # ------------------------------------------------------------------------------- loop
    has_gt = preflight.gt_kind(config) != "none"  # own sequences without known depth
    eval_every = (config.train.eval_every_epochs * steps_per_epoch
                  if config.train.eval_every_epochs and has_gt else 0)
    bar = tqdm(total=total_steps, initial=start_step, desc=config.recipe, dynamic_ncols=True,
               disable=not (config.train.progress_bar and primary))
    note = bar.write if primary else (lambda message: None)  # one console line per run
    t_window, n_window = time.perf_counter(), 0
    step = start_step
    max_skipped = int(config.train.get("max_skipped_steps", 5))
    skipped_seen = 0
    if step < total_steps:
        _say("compiling the train step (first call; minutes on a CPU) ...")
    while step < total_steps:
        host_batch = next(data_iter)
        batch = parallel.put_batch(host_batch)
        first = parallel.compile_seconds is None
        state, metrics = parallel.step(state, batch, rng)
        if first:
            _say(f"first step done in {parallel.compile_seconds:.1f} s (compile + one step); "
                 "training ...")
        step += 1
        n_window += 1
        bar.update(1)
        saving = step % config.train.ckpt_every_steps == 0 or step == total_steps
        logging_now = (step % config.train.log_every == 0 or step == total_steps
                       or step == start_step + 1)
        if saving and not logging_now:
            # A non-finite step between two log steps must not reach a checkpoint: a resumed run
            # would restart from the poisoned state.
            _check_finite(parallel.metrics_to_host(metrics), step, max_skipped)
        if logging_now:
            host_metrics = parallel.metrics_to_host(metrics)
            _check_finite(host_metrics, step, max_skipped)
            if host_metrics["skipped_steps"] > skipped_seen:
                skipped_seen = int(host_metrics["skipped_steps"])
                note(f"step {step}: {skipped_seen} update(s) so far skipped for a non-finite "
                     "gradient (params kept)")
            elapsed = time.perf_counter() - t_window
            sps = n_window * batch_size / max(elapsed, 1e-9)
            host_metrics.update(
                samples_per_second=sps,
                epoch=step / steps_per_epoch,
                learning_rate=float(tx_lr(config, steps_per_epoch, step)),
                num_traces=parallel.num_traces,
            )
            if step == start_step + 1:
                host_metrics["compile_seconds"] = parallel.compile_seconds
            writer.scalars(step, host_metrics)
            for warning in collapse.warnings(host_metrics):
                note(f"step {step}: WARNING, training may be collapsing: {warning} "
                     "(README, 'When training collapses')")
            bar.set_postfix(loss=f"{host_metrics['loss']:.4f}", sps=f"{sps:.1f}")
            t_window, n_window = time.perf_counter(), 0
        if saving:
            save(step)
        # Process 0 alone evaluates; the others wait for it in the next step's collectives.
        if eval_every and step % eval_every == 0 and step < total_steps and primary:
            current = predictor_now()
            val = evaluate(current, config, "val", workdir, config.train.get("eval_max_images"))
            writer.scalars(step, {f"val/{k}": v for k, v in val.items()})
            writer.images(step, _depth_images(current, host_batch, list(config.data.frame_ids)))
            note(f"step {step}: val abs_rel {val['abs_rel']:.4f} a1 {val['a1']:.4f}")
    bar.close()
    ckpt.close()
    if not primary:
        return {}

    # -------------------------------------------------------------------- final evaluation
    final = predictor_now()
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    if not has_gt:
        writer.close()
        print("\nNo ground truth depth for these sequences (config.data.gt_kind='none'): the "
              "model is trained but not evaluated. Look at its depth with tools/predict.py.")
        result = {"num_traces": parallel.num_traces}
        with open(os.path.join(workdir, "eval", "train_final_test_metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
        return result
    result = evaluate(final, config, "test", workdir)
    result["num_traces"] = parallel.num_traces
    writer.scalars(total_steps, {f"test/{k}": v for k, v in result.items() if np.isscalar(v)})
    writer.close()
    print(f"\nTest split ({config.data.test_split}), "
          f"{'absolute depth' if final.absolute else 'median-scaled'}:")
    print(format_metrics_table(result))
    source = checked.baseline_source()
    if source is None:
        print("\nBaseline skipped: the training frames have neither dense depth nor velodyne "
              "scans for all of them.")
    else:
        baseline = mean_depth_baseline(config, workdir, median_scaling=not final.absolute,
                                       source=source)
        print(f"\nBaseline: the average training depth map ({baseline['map_source']} depth of "
              "the training frames) predicted for every test image:")
        print(format_metrics_table(baseline))
        result["baseline_mean_depth"] = baseline
    with open(os.path.join(workdir, "eval", "train_final_test_metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def mean_depth_baseline(config, workdir: str, median_scaling: bool = True,
                        source: str | None = None) -> dict:
    """Test metrics of the "average training depth map" baseline.

    From the dense depth of the training frames where every frame has it (the synthetic set; KITTI
    with the improved ground truth), else from their velodyne scans
    (`depth_eval.mean_depth_map_from_sparse`). `source` ('dense_gt' or 'velodyne', from the
    validation pass) skips looking for them. The map is cached in `workdir/eval`.
    """
    from jdepth.data import kitti

    refs = kitti.read_split_file(config.data.train_split)
    height, width = config.data.height, config.data.width
    cache = os.path.join(workdir, "eval", f"baseline_map_{height}x{width}.npz")
    if os.path.exists(cache):
        with np.load(cache) as data:
            depth_map, source = data["depth"], str(data["source"])
    elif source == "dense_gt" or (source is None and all(
            os.path.exists(kitti.benchmark_gt_path(config.data.root, r)) for r in refs)):
        depth_map = depth_eval.mean_depth_map(config.data.root, refs, height, width)
        source = "dense"
    else:
        depth_map = depth_eval.mean_depth_map_from_sparse(
            kitti.export_gt_depths(config.data.root, refs), height, width)
        source = "velodyne"
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    np.savez(cache, depth=depth_map, source=source)
    result = depth_eval.evaluate_constant_prediction(
        depth_map, _split_gt(config, "test", workdir), median_scaling=median_scaling)
    result["map_source"] = source
    return result


def tx_lr(config, steps_per_epoch: int, step: int) -> float:
    """Learning rate in effect at `step` (for logging)."""
    from jdepth.training.state import schedule_from_config

    return float(schedule_from_config(config.optim, steps_per_epoch)(step))
