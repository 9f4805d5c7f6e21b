"""How good is a trained ManyDepth's cost volume? Its argmin depth against dense ground truth.

  python tools/cost_volume_accuracy.py --workdir runs/manydepth_demo [--split_file FILE] \
      [--data_root ROOT] [--max_images N] [--tolerance 0.1] [--json PATH]

For every frame of the split (default: the run's test split) the multi-frame network runs in eval
mode with frame t-1, as in evaluation; the depth of the cheapest hypothesis (`lowest_cost_depth`,
1/4 resolution) is compared with the dense ground truth (`proj_depth/groundtruth`, which the
synthetic set writes for every frame; on KITTI the improved GT) sampled at the matching pixels.
Only confident pixels (every hypothesis projects inside the lookup frame) with 0 < GT < 80 count.
The cost volume lives in the teacher's scale, so each image is median-scaled first.

Prints the fraction of those pixels within `tolerance` (10%) of the true depth, the abs_rel of the
argmin depth, and the confident fraction of the image. On the synthetic drives, whose exact camera
poses are known, it also prints how far a `tolerance` depth error moves a pixel's projection in
the lookup frame, in matching pixels (jdepth/eval/matching_signal.py): the most any cost volume
at this resolution can resolve.
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_root", default=None, help="default: the run's data.root")
    parser.add_argument("--split_file", default=None, help="default: the run's test split")
    parser.add_argument("--max_images", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from jdepth.data import kitti, pipeline
    from jdepth.eval import depth_eval
    from jdepth.inference import DepthPredictor
    from jdepth.models.manydepth import MATCHING_SCALE
    from jdepth.training import manydepth

    predictor = DepthPredictor.from_workdir(args.workdir)
    config = predictor.config
    if config.recipe != "manydepth":
        raise SystemExit(f"{args.workdir} is a {config.recipe} run, not manydepth")
    root = args.data_root or config.data.root
    refs = kitti.read_split_file(args.split_file or config.data.test_split)
    if args.max_images:
        refs = refs[: args.max_images]
    networks = manydepth.build_networks(config)
    forward = jax.jit(functools.partial(manydepth.multi_frame_forward, networks=networks))
    h, w = predictor.height >> MATCHING_SCALE, predictor.width >> MATCHING_SCALE

    within, abs_rel, confident, flows, shifts = [], [], [], [], []
    for start in range(0, len(refs), args.batch_size):
        chunk = refs[start : start + args.batch_size]
        images = depth_eval.load_split_images(root, chunk)
        extra = depth_eval.lookup_inputs(predictor, root, chunk, images)
        context = {
            "lookup": jnp.asarray(np.stack([predictor.preprocess(im) for im in extra["lookup"]])),
            "K": jnp.asarray(extra["K"], jnp.float32),
            "lookup_valid": jnp.asarray(extra["lookup_valid"]),
        }
        current = jnp.asarray(np.stack([predictor.preprocess(im) for im in images]))
        _, aux = forward(predictor.params, predictor.batch_stats, predictor.extra, current,
                         context=context)
        cost_depth = np.asarray(aux["lowest_cost_depth"])[..., 0]
        conf = np.asarray(aux["confidence"])[..., 0] > 0
        for i, ref in enumerate(chunk):
            gt = kitti.load_benchmark_depth(kitti.benchmark_gt_path(root, ref))
            signal = _matching_signal(root, ref, gt, args.tolerance)
            if signal is not None:
                flows.append(signal[0])
                shifts.append(signal[1])
            gt = pipeline.resize_labels(gt, h, w)
            mask = conf[i] & (gt > 0) & (gt < 80)
            confident.append(conf[i].mean())
            if mask.sum() < 10:
                continue
            pred = cost_depth[i][mask]
            pred = pred * np.median(gt[mask]) / np.median(pred)
            ratio = pred / gt[mask]
            within.append(np.mean(np.abs(ratio - 1) < args.tolerance))
            abs_rel.append(np.mean(np.abs(pred - gt[mask]) / gt[mask]))
    result = {
        "images": len(within),
        f"fraction_within_{args.tolerance:g}": float(np.mean(within)) if within else None,
        "abs_rel": float(np.mean(abs_rel)) if abs_rel else None,
        "confident_fraction": float(np.mean(confident)),
        "bins": [float(predictor.extra["min_depth_bin"]), float(predictor.extra["max_depth_bin"])],
    }
    if shifts:
        flow, shift = np.concatenate(flows), np.concatenate(shifts)
        result["exact_geometry"] = {
            "median_flow_matching_px": float(np.median(flow)),
            f"median_shift_of_{args.tolerance:g}_depth_error_matching_px": float(np.median(shift)),
            "fraction_shift_at_least_half_a_matching_px": float(np.mean(shift >= 0.5)),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _matching_signal(root: str, ref, gt: np.ndarray, tolerance: float):
    """(flow, shift) of ``matching_signal.depth_error_shift`` for a synthetic frame, else None."""
    from jdepth.data import kitti
    from jdepth.eval import matching_signal
    from jdepth.models.manydepth import MATCHING_SCALE

    drive = os.path.join(root, ref.folder)
    if ref.frame_index < 1 or not os.path.exists(os.path.join(drive, "synthetic_meta.json")):
        return None
    T = matching_signal.synthetic_relative_pose(drive, ref.frame_index, ref.frame_index - 1)
    calib = kitti.load_camera_calibration(kitti.calib_dir(root, ref),
                                          kitti.side_to_camera(ref.side))
    K = kitti.scale_intrinsics(kitti.normalised_intrinsics(calib), gt.shape[1], gt.shape[0])
    valid = np.where((gt > 0) & (gt < 80), gt, 0.0)
    return matching_signal.depth_error_shift(valid, K, T, tolerance, 2**MATCHING_SCALE)


if __name__ == "__main__":
    raise SystemExit(main())
