"""Every plug-in against its control, from one shared starting point, equal budget, several seeds.

  python tools/run_plugin_protocol.py --start runs/testbeds/short/synthetic/demo/seed0 \
      [--runs runs/plugins] [--steps_epochs 2] [--seeds 0,1,2] [--only issl,msff] \
      [--results RESULTS.md]

The papers start from ImageNet-initialised encoders; here the stand-in is a Monodepth2 checkpoint
trained on the testbed (`--start`, a finished `configs/demo.py` run on the synthetic set). Every
variant fine-tunes from it for the same number of epochs, the last at lr / 10, with the automask
from the first step (make_start.fine_tune_overrides), with each seed (data order, augmentation and
the plug-ins' own randomness; the starting weights are the same):

  control        Monodepth2 (configs/demo.py), no plug-in
  issl           + ISSL isometric self-samples (Cha et al.; configs/demo_issl.py)
  panoptic_head  + YOSO panoptic head at the paper's weight 0.35 (Shyam et al.)
  contrastive    + instance-aware contrastive loss at 0.1 (the paper gives no weight: FSRE's)
  contrastive_low  the same at 0.001, the weight configs/demo_panoptic.py ships
  piecewise      + piece-wise pose, the paper's settings (configs/demo_piecewise.py)
  small_objects  + small-object masking (thing instances under `masking.min_area_fraction` of the
                 image left out of the photometric loss; Shyam et al. Sec. 3)
  msff           ManyDepth + multi-scale feature fusion, against `manydepth` (ManyDepth without
                 it) from the same start: the Monodepth2 weights in its teacher, pose net and every
                 matching variable of its multi-frame network

The control of a Monodepth2-family plug-in is `control`; of `msff`, `manydepth`. For each the table
gives the test AbsRel mean and spread, the paired difference to the control (same seed), and the
paper's claim (the plug-in lowers AbsRel) judged in direction: "yes" when the mean difference is
below zero by more than twice its standard error, "no" when above zero by as much, else "within
noise". Piece-wise pose is also judged on moving cars and the contrastive loss on the edge band
(dense exact depth, jdepth/eval/regions.py), the regions their papers target.
Markdown goes into RESULTS.md between `<!-- plugins:begin -->` and `<!-- plugins:end -->`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_start  # noqa: E402  (assembles the start .npz from the finished run)
import run_testbeds  # noqa: E402  (the sibling runner: its page writer and --only selection)
BEGIN, END = "<!-- plugins:begin -->", "<!-- plugins:end -->"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    config: str
    what: str
    control: str | None  # the variant it is judged against; None for a control
    overrides: tuple[str, ...] = ()
    region: str | None = None  # a region of jdepth/eval/regions.py the plug-in targets


VARIANTS = (
    Variant("control", "demo", "Monodepth2, no plug-in", None),
    Variant("issl", "demo_issl", "+ ISSL (weight 0.1, n_k = 4)", "control"),
    Variant("panoptic_head", "demo_panoptic", "+ panoptic head (0.35)", "control",
            ("--config.panoptic.weight=0.35", "--config.contrastive.enabled=False")),
    Variant("contrastive", "demo_panoptic", "+ contrastive loss (0.1)", "control",
            ("--config.panoptic.enabled=False", "--config.contrastive.weight=0.1"), "edge_band"),
    Variant("contrastive_low", "demo_panoptic", "+ contrastive loss (0.001)", "control",
            ("--config.panoptic.enabled=False", "--config.contrastive.weight=0.001"), "edge_band"),
    Variant("piecewise", "demo_piecewise", "+ piece-wise pose (paper settings)", "control",
            region="moving"),
    Variant("small_objects", "demo", "+ small-object masking", "control",
            ("--config.data.load_panoptic=True", "--config.masking.small_objects=True")),
    Variant("manydepth", "manydepth_demo", "ManyDepth, no MSFF", None),
    Variant("msff", "manydepth_demo", "ManyDepth + MSFF", "manydepth",
            ("--config.model.msff=True",)),
)


def start_weights(start: str, out_dir: str, recipe: str) -> str:
    """The start checkpoint as a params .npz for `recipe` ('monodepth2' or 'manydepth')."""
    from jdepth.config_files import sibling
    from jdepth.interop import params_npz
    from jdepth.training import checkpoint

    path = os.path.join(out_dir, f"start_{recipe}.npz")
    if os.path.exists(path):
        return path
    if recipe == "manydepth":
        # Its teacher is a Monodepth2 depth net; its multi-frame net shares the ResNet encoder and
        # the decoder layout, so every variable with the same path and shape starts from them too.
        name, pairs = "manydepth_demo", (("mono", "depth"), ("pose", "pose"), ("depth", "depth"))
    else:
        name, pairs = "demo", (("depth", "depth"), ("pose", "pose"))
    config = sibling(os.path.join(REPO, "configs", "x.py"), name).get_config()
    start_config = checkpoint.load_config(start)
    config.data.height, config.data.width = start_config.data.height, start_config.data.width
    takes = [make_start.Take(net, start, source) for net, source in pairs]
    params, stats, _ = make_start.build(config, takes)
    params_npz.save(path, params, stats)
    return path


def train(variant: Variant, seed: int, args, start_npz: str) -> str:
    workdir = os.path.join(args.runs, variant.name, f"seed{seed}")
    if not os.path.exists(os.path.join(workdir, "eval", "train_final_test_metrics.json")):
        cmd = [sys.executable, "-m", "jdepth.train",
               "--config", os.path.join(REPO, "configs", f"{variant.config}.py"),
               "--workdir", workdir, f"--config.seed={seed}",
               f"--config.model.encoder_init=params:{start_npz}",
               *make_start.fine_tune_overrides(args.steps_epochs),
               "--config.train.eval_every_epochs=0", "--config.train.progress_bar=False",
               *variant.overrides]
        if variant.config.startswith("manydepth"):
            # The teacher starts trained: freeze it from the start, as ManyDepth does after its
            # first epochs, and let the cost volume's depth range find its depths first.
            cmd += make_start.FROZEN_TEACHER
        os.makedirs(workdir, exist_ok=True)
        print(f"[plugins] {variant.name}/seed{seed}", flush=True)
        with open(os.path.join(workdir, "train.log"), "a") as log:
            if subprocess.run(cmd, check=False, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"{workdir}: training failed, see {workdir}/train.log")
    return workdir


def scores(workdir: str, region: str | None) -> dict:
    from jdepth.eval import regions
    from jdepth.inference import DepthPredictor

    with open(os.path.join(workdir, "eval", "train_final_test_metrics.json")) as f:
        out = {"abs_rel": json.load(f)["abs_rel"]}
    if region:
        cache = os.path.join(workdir, "eval", f"region_{region}.json")
        if not os.path.exists(cache):
            predictor = DepthPredictor.from_workdir(workdir)
            result = regions.evaluate_regions(predictor, predictor.config.data.root,
                                              predictor.config.data.test_split,
                                              gt_kind="dense", median_scaling=True)
            with open(cache, "w") as f:
                json.dump({"abs_rel": result[region]["abs_rel"]}, f)
        with open(cache) as f:
            out[region] = json.load(f)["abs_rel"]
    return out


def start_abs_rel(start: str) -> float:
    with open(os.path.join(start, "eval", "train_final_test_metrics.json")) as f:
        return json.load(f)["abs_rel"]


def verdict(differences: list[float]) -> str:
    d = np.asarray(differences)
    if len(d) < 2:
        return "n/a (one seed)"
    error = d.std(ddof=1) / np.sqrt(len(d))
    if d.mean() < -2 * error:
        return "yes"
    if d.mean() > 2 * error:
        return "no"
    return "within noise"


def table(results: dict, seeds, budget: str = "the same number of steps") -> str:
    lines = [BEGIN, "", "## Plug-ins from one shared starting point", "",
             ("Written by `python tools/run_plugin_protocol.py` (do not edit by hand). Every row "
             "fine-tunes the same Monodepth2 checkpoint (the stand-in for the papers' "
             f"ImageNet-initialised encoders) for {budget}, once per seed; the "
             "difference is paired by seed. Paper's claim: the plug-in lowers AbsRel; `yes`/`no` "
             "when the mean difference is beyond twice its standard error, else `within noise`."),
             "", ("| plug-in | what | metric | mean ± std | control | difference (paired) | "
                  "paper's claim holds |"), "|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        if v.name not in results:
            continue
        metrics = ["abs_rel"] + ([v.region] if v.region else [])
        for metric in metrics:
            ours = np.array([results[v.name][s][metric] for s in seeds])
            row = f"| `{v.name}` | {v.what} | {metric} | {ours.mean():.3f} ± {ours.std(ddof=1):.3f}"
            if v.control and v.control in results:
                control = np.array([scores_of(results, v.control, s, metric) for s in seeds])
                diff = ours - control
                row += (f" | {control.mean():.3f} | {diff.mean():+.3f} ± {diff.std(ddof=1):.3f} | "
                        f"{verdict(list(diff))} |")
            else:
                row += " | - | - | (control) |"
            lines.append(row)
    lines += ["", END]
    return "\n".join(lines)


def scores_of(results: dict, name: str, seed, metric: str) -> float:
    value = results[name][seed].get(metric)
    if value is None:
        raise KeyError(f"{name} seed {seed} has no {metric}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--start", required=True, help="a finished configs/demo.py run")
    parser.add_argument("--runs", default=os.path.join(REPO, "runs", "plugins"))
    parser.add_argument("--steps_epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default=None)
    parser.add_argument("--results", default=os.path.join(REPO, "RESULTS.md"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = run_testbeds.select(VARIANTS, args.only, parser.error)
    os.makedirs(args.runs, exist_ok=True)
    results = {}
    for v in chosen:
        # A control needs its own metrics too (regions of the plug-ins that target one).
        region_of_control = {w.region for w in VARIANTS if w.control == v.name and w.region}
        start = start_weights(args.start, args.runs,
                              "manydepth" if v.config.startswith("manydepth") else "monodepth2")
        results[v.name] = {}
        for seed in seeds:
            workdir = train(v, seed, args, start)
            score = scores(workdir, v.region)
            for region in region_of_control:
                score.update(scores(workdir, region))
            results[v.name][seed] = score
    with open(os.path.splitext(args.results)[0] + "_plugins.json", "w") as f:
        json.dump({v: {str(s): r for s, r in d.items()} for v, d in results.items()}, f, indent=1)
    budget = (f"{args.steps_epochs} epochs, the last at lr / 10, from `{args.start}` (test "
              f"AbsRel {start_abs_rel(args.start):.3f})")
    run_testbeds.write_results(args.results, table(results, seeds, budget), BEGIN, END)
    print(f"[plugins] wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
