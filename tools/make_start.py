"""A starting point for one recipe assembled from other recipes' finished runs (a params .npz).

  python tools/make_start.py --config configs/manydepth_plus_demo.py \
      --take mono=runs/demo:depth --take pose=runs/demo:pose --take depth=runs/hrdepth_plus:depth \
      --out runs/starts/manydepth_plus.npz

then train with `--config.model.encoder_init=params:runs/starts/manydepth_plus.npz`.

Each `--take NET=WORKDIR:SOURCE` copies into the target's network NET every variable of the run's
network SOURCE whose path and shape NET also has (a ResNet Monodepth2 depth net into ManyDepth's
single-frame teacher whole; an HRNet depth net into ManyDepth+'s multi-frame net except its cost
volume layers). Variables nothing covers keep their random initialisation; the tool prints how
many of each network's variables it covered, and refuses a take that covers none.

The papers start from ImageNet-initialised encoders, which cannot be downloaded here; a run
trained on the testbed is the stand-in (issue 23's shared starting point).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


# A teacher frozen from step 0 never moves ManyDepth's bins from their initial 0.1 .. 10 (a relative
# depth teacher here spans about 0.1 .. 1.1): they follow it for the first 20 steps instead.
FROZEN_TEACHER = ("--config.manydepth.freeze_teacher_epoch=0",
                  "--config.manydepth.bins_track_steps=20")


def fine_tune_overrides(epochs: int) -> tuple[str, ...]:
    """jdepth.train overrides of a fine-tune from a start: `epochs` epochs, the last at lr / 10 as
    the start's own schedule ended, and the automask from step 0 (the demo's from-scratch delay of
    40 steps trained the start's depth on static pixels first: the plug-in protocol's control went
    from the start's 0.275 to 0.368). Add FROZEN_TEACHER for a ManyDepth recipe."""
    return (f"--config.train.num_epochs={epochs}",
            f"--config.optim.decay_epochs=({max(epochs - 1, 1)},)",
            "--config.loss.automask_start_step=0")


@dataclasses.dataclass(frozen=True)
class Take:
    net: str  # the target's network ("depth", "mono", "pose", ...)
    workdir: str  # a finished (or checkpointed) training run
    source: str  # the run's network to copy from

    @classmethod
    def parse(cls, spec: str) -> "Take":
        """'mono=runs/demo:depth' -> Take('mono', 'runs/demo', 'depth')."""
        net, sep, rest = spec.partition("=")
        workdir, colon, source = rest.rpartition(":")
        if not (sep and colon and net and workdir and source):
            raise ValueError(f"--take {spec!r}: expected NET=WORKDIR:SOURCE_NET")
        return cls(net, workdir, source)


def target_shapes(config) -> dict:
    """{"params": ..., "batch_stats": ...} shape trees of the recipe `config` builds."""
    import jax

    from jdepth.training import recipes

    recipe = recipes.get(config.recipe)
    networks = recipe.build_networks(config, bn_axis_name=None)
    params, stats = jax.eval_shape(
        lambda: recipe.init_variables(networks, config, jax.random.PRNGKey(0)))
    return {"params": params, "batch_stats": stats}


def run_variables(workdir: str) -> dict:
    """The latest checkpoint's {"params": ..., "batch_stats": ...} of a training run."""
    from jdepth.training import checkpoint, recipes

    config = checkpoint.load_config(workdir)
    restored, _ = checkpoint.restore_params(workdir, recipes.abstract_state_tree(config))
    return {"params": dict(restored["params"]), "batch_stats": dict(restored["batch_stats"])}


def build(config, takes: list[Take]) -> tuple[dict, dict, dict[str, tuple[int, int]]]:
    """(params, batch_stats, {net: (covered, total)}) for `config` from the takes' runs.

    Raises:
        ValueError: a take names a network the target or the run lacks, or covers no variable.
    """
    import jax

    from jdepth.interop import trees

    target = target_shapes(config)
    runs: dict[str, dict] = {}
    out = {"params": {}, "batch_stats": {}}
    coverage = {}
    for take in takes:
        if take.net not in target["params"]:
            raise ValueError(f"--take {take.net}=...: recipe {config.recipe!r} has no network "
                             f"{take.net!r} (it has {sorted(target['params'])})")
        if take.workdir not in runs:
            runs[take.workdir] = run_variables(take.workdir)
        run = runs[take.workdir]
        if take.source not in run["params"]:
            raise ValueError(f"{take.workdir}: the run has no network {take.source!r} (it has "
                             f"{sorted(run['params'])})")
        for collection in out:
            kept = trees.matching_subset(run[collection].get(take.source, {}),
                                         target[collection].get(take.net, {}))
            if kept:
                out[collection][take.net] = kept
        covered = len(jax.tree_util.tree_leaves(out["params"].get(take.net, {})))
        if not covered:
            raise ValueError(f"{take.workdir}:{take.source} -> {take.net}: no variable has the "
                             "same path and shape; nothing to start from")
        coverage[take.net] = (covered, len(jax.tree_util.tree_leaves(target["params"][take.net])))
    return out["params"], out["batch_stats"], coverage


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", required=True, help="the target recipe's config file")
    parser.add_argument("--take", action="append", required=True, help="NET=WORKDIR:SOURCE_NET")
    parser.add_argument("--out", required=True, help="the params .npz to write")
    parser.add_argument("--set", action="append", default=[],
                        help="a config override as jdepth.train takes it (--config.a.b=v or a.b=v),"
                             " where the recipe needs it to build (a student's teacher_workdir)")
    args = parser.parse_args(argv)
    from jdepth.config_files import override, sibling
    from jdepth.interop import params_npz

    try:
        takes = [Take.parse(spec) for spec in args.take]
    except ValueError as e:
        parser.error(str(e))
    if not os.path.exists(args.config):
        parser.error(f"--config {args.config}: no such file")
    config = sibling(args.config, os.path.splitext(os.path.basename(args.config))[0]).get_config()
    for assignment in args.set:
        override(config, assignment)
    params, stats, coverage = build(config, takes)
    params_npz.save(args.out, params, stats)
    for net, (covered, total) in coverage.items():
        print(f"[start] {net}: {covered} of {total} variables")
    print(f"[start] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
