"""Plug-in warm-up: a plug-in loss reaches the shared depth network only from its start step.

From scratch, Monodepth2's depth and ego-pose nets co-adapt out of the "static camera" minimum in
the first ~100 steps (the mean ego translation grows past ~0.012 by then). Every plug-in run at
the demo budget whose extra gradients reach the shared encoder / decoder from step 0 stays near
that minimum (RESULTS.md), so each plug-in section has a `start_step` (0 = the papers' behaviour):

  * panoptic head: trains from step 0 on gradient-stopped encoder features, so it is not idle;
    its gradient into the encoder starts at `panoptic.start_step`;
  * contrastive loss, ISSL: no parameters of their own, so their weight is 0 before the start.

The gate is a traced value of the step, so switching on never recompiles the step. The gated
terms are still computed during the warm-up, so it costs what the plug-in costs. Skipping them
with `lax.cond` would be cheaper in principle, but on XLA:CPU (jax 0.10.2) the gradient of
convolutions inside a conditional ran ~12x slower than outside (the pose net's value_and_grad at
8 x 192x64: 1.9 s plain, 23 s inside either branch of a cond), which made the whole step slower.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def active(step: jax.Array | int, start_step: int) -> jax.Array:
    """1.0 from `start_step` on, 0.0 before (float32 scalar; `step` may be traced)."""
    if start_step < 0:
        raise ValueError(f"a plug-in's start_step must be >= 0, got {start_step}")
    return (jnp.asarray(step) >= start_step).astype(jnp.float32)


def start_step(section) -> int:
    """`section.start_step` of a plug-in config section; 0 when the section predates it."""
    return int(section.get("start_step", 0))


def scale_gradient(tree, factor: jax.Array):
    """Values of `tree` unchanged; the gradient flowing back through them multiplied by `factor`.

    `factor` is a scalar in [0, 1]; with 0 every leaf acts as `stop_gradient`.
    """
    def scale(x):
        return factor * x + (1.0 - factor) * jax.lax.stop_gradient(x)

    return jax.tree_util.tree_map(scale, tree)
