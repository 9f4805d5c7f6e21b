"""Global scale head of the scale-aware student (Shyam et al. Sec. 3.4, Fig. 4; DESIGN.md item 5).

    deepest encoder feature [B, h, w, C]   (gradient stopped: the head reads the encoder)
      -> 3 x (3x3 conv + ReLU, `features` channels) -> 3x3 conv to 1 channel (zero-initialised)
      -> global average pool / (9 x features) + global_logit (a learnt scalar) -> sigmoid s
      -> gamma = gamma_min * (gamma_max / gamma_min) ** s   [B]   (log-uniform in the range)

The paper gives "four 3x3 convolutional layers on encoder-derived features, followed by a global
average pooling layer and a sigmoid activation function"; the hidden width, the range and the
sigmoid's log-space mapping are ours (config):

* Log-space mapping. gamma multiplies depth, so what matters is its ratio to the right value: the
  sigmoid spans log(gamma) uniformly and a logit step moves gamma by the same factor anywhere in
  the range. A linear map (gamma_min + (gamma_max - gamma_min) * s) packs the small ratios into
  the sigmoid's flat tail (gamma = 0.05 is out of reach of (0.1, 10) altogether) and cannot reach
  a teacher/student ratio of 58, which an un-metric teacher gave on the synthetic suite
  (RESULTS.md).
* Range 1e-3 .. 1e3 (configs/hrdepth_plus.py): three decades each way of the student's own depth
  scale, whose parametrisation spans min_depth .. max_depth = 0.1 .. 100; ratios 0.05 and 58
  sit at s = 0.28 and 0.79, away from the saturated ends.
* The last conv starts at zero, so gamma starts at the range's geometric centre
  sqrt(gamma_min * gamma_max) (1 by default: the student's depth taken as it is) whatever the
  encoder's features are, rather than at a random point of a six-decade range.
* The pooled output is divided by the last conv's fan-in, 9 x features. Adam moves each of
  that conv's weights by about lr per step, all in the direction the distillation asks for, so
  the pooled output moves by about lr x 9 x features x |x| per step, and the L1's gradient keeps
  its size up to the optimum while Adam's momentum carries it past. Without the division the
  128-wide head at the demo's learning rate overshot onto gamma_min in a short demo-sized run and
  stayed there, where the sigmoid is flat; with it, it follows a x10 jump of the student's depth
  without touching the floor (tests/test_scale_head.py), but in that short run it stalled near 1
  instead (RESULTS.md, issue 24: not yet a robust learner of the factor).
* A scalar `global_logit` (zero at the start) is added to the pooled output, outside the fan-in
  division, and the optimizer gives it its own learning rate (`optim.scale_lr_scale`,
  jdepth/training/state.py). A monocular video has one scale, so this scalar carries the factor
  the teacher hands down and the convolutions learn only what differs between images. Through the
  convolutions alone the factor moved too slowly: the last conv's bias is divided by the fan-in,
  and once the first conv's ReLUs died on the encoder's features the weights carried nothing
  (RESULTS.md, issue 24). Adam moves the scalar by about its learning rate per step, i.e.
  log(gamma) by up to 3.45 x that at the range's centre, whatever the size of the L1's gradient.
* The encoder features enter under stop_gradient. The paper's mechanism is one global factor
  learnt from the teacher on top of the student's relative depth; the head's only training signal
  is the distillation loss, which therefore must not reach the encoder that the photometric loss
  trains (jdepth/training/student.py).

A monocular video has one global scale, so one scalar per image (the head's average pool) is the
paper's global factor; its spread over the test frames is reported by tools/run_synthetic_suite.py.
The head has no BatchNorm, so it needs no running statistics.
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
# Name of the head's scalar logit offset; the optimizer gives every parameter of this name the
# learning rate lr x optim.scale_lr_scale (jdepth/training/state.py).
GLOBAL_LOGIT = "global_logit"
GAMMA_MIN = 1e-3
GAMMA_MAX = 1e3


def gamma_from_logit(logit: jax.Array, gamma_min: float, gamma_max: float) -> jax.Array:
    """Maps a logit to the scale range log-uniformly: `[...]` -> `[...]` in (min, max)."""
    log_min, log_max = math.log(gamma_min), math.log(gamma_max)
    return jnp.exp(log_min + (log_max - log_min) * jax.nn.sigmoid(logit))


def logit_from_gamma(gamma, gamma_min: float, gamma_max: float):
    """Inverse of `gamma_from_logit` (for tests and for reading a logged gamma)."""
    s = (jnp.log(gamma) - math.log(gamma_min)) / (math.log(gamma_max) - math.log(gamma_min))
    return jnp.log(s) - jnp.log1p(-s)


class ScaleHead(nn.Module):
    """Predicts one global depth scale per image from the deepest encoder feature.

    Attributes:
        features: channels of the three hidden 3x3 convs.
        gamma_min, gamma_max: range of the output scale (log-uniform in the sigmoid).
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
        """`[B, h, w, C]` -> gamma `[B]` float32 in (gamma_min, gamma_max)."""
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
        global_logit = self.param(GLOBAL_LOGIT, nn.initializers.zeros, (), jnp.float32)
        logit = global_logit + gain * jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        return gamma_from_logit(logit, self.gamma_min, self.gamma_max)
