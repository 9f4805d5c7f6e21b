"""Output parametrisation for metric training: where depth and translation start, in metres.

Self-supervised depth is scale-free, so the reference parametrises outputs for the arbitrary scale
it settles in: disparity heads at sigmoid(0) (a depth of 0.2 m for depths in [0.1, 100]) and the
pose translation at 0.01 x the raw output. A speed loss (jdepth/losses/velocity.py) fixes the scale
at metres: ~20 m scene depths and ~1 m per frame. Reaching those from the reference's start takes a
disparity logit of about -5.5 and a raw translation of ~100, which Adam at lr 2e-4 moves by ~0.05
and ~0.5 per step: hundreds of steps spent only on scale. So a metric recipe sets two things:

* `model.init_depth` (metres; 0 = the reference): every disparity head's bias (modules named
  `dispconv_*`, of the single- and multi-frame depth nets and the DIFFNet decoder) so that the
  initial depth is about that value;
* `model.pose_translation_scale` (default 0.01, the reference): the translation factor of the pose
  decoder, 1.0 for metric runs so one raw unit is one metre.

Both are reparametrisations, not losses: the objective is unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def disparity_logit(depth: float, min_depth: float, max_depth: float) -> float:
    """The sigmoid logit that `geometry.disp_to_depth` maps to `depth` (metres).

    disp_to_depth: scaled = 1/max + (1/min - 1/max) * sigmoid(logit); depth = 1 / scaled.
    """
    if not min_depth < depth < max_depth:
        raise ValueError(f"model.init_depth must lie strictly inside (min_depth, max_depth) = "
                         f"({min_depth}, {max_depth}), got {depth}")
    lo, hi = 1.0 / max_depth, 1.0 / min_depth
    p = (1.0 / depth - lo) / (hi - lo)
    return math.log(p / (1.0 - p))


def set_initial_depth(params, depth: float, min_depth: float, max_depth: float):
    """`params` with the bias of every `dispconv_*` module set to `disparity_logit(depth)`.

    Args:
      params: a network's params tree (nested dicts).
      depth, min_depth, max_depth: metres.

    Returns:
      A new tree; raises when it holds no disparity head (a typo in a network name must not
      silently train from the reference's start).
    """
    logit = disparity_logit(depth, min_depth, max_depth)
    found = []

    def visit(path, leaf):
        names = [getattr(p, "key", "") for p in path]
        if names[-1] == "bias" and any(str(n).startswith("dispconv_") for n in names):
            found.append(names)
            return jnp.full_like(leaf, logit)
        return leaf

    new = jax.tree_util.tree_map_with_path(visit, params)
    if not found:
        raise ValueError("jdepth/training/metric_init.py: model.init_depth is set but the network "
                         "has no disparity head (no module named dispconv_*)")
    return new


def apply(params: dict, config, networks=("depth",)) -> dict:
    """`config.model.init_depth` applied to the named networks of a params dict (0: unchanged)."""
    depth = float(config.model.get("init_depth", 0.0) or 0.0)
    if depth <= 0:
        return params
    m = config.model
    return {name: (set_initial_depth(p, depth, m.min_depth, m.max_depth) if name in networks
                   else p) for name, p in params.items()}
