"""Global scale head of the scale-aware student (Shyam et al. Sec. 3.4, Fig. 4; DESIGN.md item 5).

    deepest encoder feature [B, h, w, C]   (gradient stopped: the head reads the encoder)
      -> 3 x (3x3 conv + ReLU, `features` channels) -> 3x3 conv to 1 channel (zero-initialised)
      -> global average pool / (9 x features) -> sigmoid s
      -> per-image factor m = gamma_min * (gamma_max / gamma_min) ** s   (log-uniform)
    gamma = exp(global_log_scale) * m   [B]   (global_log_scale: ONE learnt scalar)

The paper gives "four 3x3 convolutional layers on encoder-derived features, followed by a global
average pooling layer and a sigmoid activation function", and says the teacher's pseudo-absolute
depth trains "a single global scale factor". The hidden width, the ranges and the split of gamma
into a global scalar and the paper's per-image head are ours:

* `global_log_scale` (zero at the start) is the single global factor: a monocular video has one
  scale, the one the teacher hands down. It is unbounded and linear in log(gamma), so a
  teacher/student ratio of 58 or 0.05 (an un-metric teacher gave 58 on the synthetic suite,
  RESULTS.md) is as easy to reach as 2, and nothing saturates on the way. The optimizer moves it
  at its own rate with Adam on the gradient's sign (`optim.scale_lr_scale`,
  jdepth/training/state.py, which says why the sign).
* The paper's head gives what differs between images, a factor in (gamma_min, gamma_max), one
  decade either way by default (configs/hrdepth_plus.py), log-uniform in the sigmoid so a logit
  step is the same factor anywhere. Bounded, because it learns at the networks' rate from raw
  gradients: on its own it carried the whole factor badly. Through a (1e-3, 1e3) sigmoid (session
  13) its convs overshot onto the floor (no fan-in division) or, with the division, stalled at 1
  once their ReLUs died; a global logit inside that sigmoid followed the student's early depth
  swing onto the floor, where the sigmoid is flat, and could not climb back within the budget
  (RESULTS.md, issue 24).
* The last conv starts at zero, so m starts at the range's geometric centre (1 by default) and
  gamma at 1: the student's depth taken as it is. Its pooled output is divided by its fan-in,
  9 x features: Adam moves each of its weights by about lr per step, all in the same direction,
  which without the division moves the logit by lr x 9 x features x |x| per step.
* The encoder features enter under stop_gradient. The paper's mechanism is one global factor
  learnt from the teacher on top of the student's relative depth; the head's only training signal
  is the distillation loss, which therefore must not reach the encoder that the photometric loss
  trains (jdepth/training/student.py).

The spread of gamma over the test frames is reported by tools/run_synthetic_suite.py. The head
has no BatchNorm, so it needs no running statistics.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.models.layers import torch_default_conv

Dtype = Any

NUM_CONVS = 4
# Name of the global log-scale; the optimizer gives every parameter of this name its own group
# (jdepth/training/state.py).
GLOBAL_SCALE = "global_log_scale"
GAMMA_MIN = 0.1
GAMMA_MAX = 10.0


def gamma_from_logit(logit: jax.Array, gamma_min: float, gamma_max: float) -> jax.Array:
    """Maps a logit to the scale range log-uniformly: `[...]` -> `[...]` in (min, max)."""
    log_min, log_max = math.log(gamma_min), math.log(gamma_max)
    return jnp.exp(log_min + (log_max - log_min) * jax.nn.sigmoid(logit))


def logit_from_gamma(gamma, gamma_min: float, gamma_max: float):
    """Inverse of `gamma_from_logit` (for tests and for reading a logged gamma)."""
    s = (jnp.log(gamma) - math.log(gamma_min)) / (math.log(gamma_max) - math.log(gamma_min))
    return jnp.log(s) - jnp.log1p(-s)


class ScaleHead(nn.Module):
    """Predicts the depth scale gamma of each image: a global learnt scale times a per-image factor.

    Attributes:
        features: channels of the three hidden 3x3 convs.
        gamma_min, gamma_max: range of the per-image factor (log-uniform in the sigmoid); gamma is
            exp(global_log_scale) times it.
        logit_gain: factor on the pooled output before the sigmoid; None: 1 / (9 x features), the
            last conv's fan-in (module docstring).
        dtype: computation dtype; the scale is returned in float32.
    """

    features: int = 128
    gamma_min: float = GAMMA_MIN
    gamma_max: float = GAMMA_MAX
    logit_gain: float | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, deepest: jax.Array) -> jax.Array:
        """`[B, h, w, C]` -> gamma `[B]` float32: exp(global_log_scale) x (gamma_min, gamma_max)."""
        if not self.gamma_max > self.gamma_min > 0:
            raise ValueError(
                "jdepth/models/scale_head.py: need 0 < gamma_min < gamma_max, got "
                f"({self.gamma_min}, {self.gamma_max})"
            )
        x = jax.lax.stop_gradient(deepest)
        for k in range(NUM_CONVS):
            last = k == NUM_CONVS - 1
            x = torch_default_conv(1 if last else self.features, 3, x.shape[-1], dtype=self.dtype,
                                   name=f"conv{k}", padding=1, zero_init=last)(x)
            if not last:
                x = nn.relu(x)
        gain = self.logit_gain
        if gain is None:
            gain = 1.0 / (9 * self.features)
        logit = gain * jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        global_log_scale = self.param(GLOBAL_SCALE, nn.initializers.zeros, (), jnp.float32)
        return jnp.exp(global_log_scale) * gamma_from_logit(logit, self.gamma_min, self.gamma_max)
