"""Global scale head of the scale-aware student (Shyam et al. Sec. 3.4, Fig. 4; DESIGN.md item 5).

    deepest encoder feature [B, h, w, C]
      -> 3 x (3x3 conv + ReLU, `features` channels) -> 3x3 conv to 1 channel
      -> global average pool -> sigmoid -> gamma = gamma_min + (gamma_max - gamma_min) * s   [B]

The paper gives "four 3x3 convolutional layers ... followed by a global average pooling layer and a
sigmoid"; the width of the hidden convs and the range are ours (config). Absolute depth is
`gamma * depth` of the scale-invariant student; a monocular video has one global scale, so one
scalar per image suffices. The head has no BatchNorm, so it needs no running statistics.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.models.layers import torch_default_conv

Dtype = Any

NUM_CONVS = 4


def gamma_from_logit(logit: jax.Array, gamma_min: float, gamma_max: float) -> jax.Array:
    """Maps a logit to the scale range through a sigmoid: `[...]` -> `[...]` in (min, max)."""
    return gamma_min + (gamma_max - gamma_min) * jax.nn.sigmoid(logit)


class ScaleHead(nn.Module):
    """Predicts one global depth scale per image from the deepest encoder feature.

    Attributes:
        features: channels of the three hidden 3x3 convs.
        gamma_min, gamma_max: range of the output scale.
        dtype: computation dtype; the scale is returned in float32.
    """

    features: int = 128
    gamma_min: float = 0.1
    gamma_max: float = 10.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, deepest: jax.Array) -> jax.Array:
        """`[B, h, w, C]` -> gamma `[B]` float32 in (gamma_min, gamma_max)."""
        if not self.gamma_max > self.gamma_min > 0:
            raise ValueError(
                "jdepth/models/scale_head.py: need 0 < gamma_min < gamma_max, got "
                f"({self.gamma_min}, {self.gamma_max})"
            )
        x = deepest
        for k in range(NUM_CONVS):
            out = 1 if k == NUM_CONVS - 1 else self.features
            x = torch_default_conv(out, 3, x.shape[-1], dtype=self.dtype, name=f"conv{k}",
                                   padding=1)(x)
            if k < NUM_CONVS - 1:
                x = nn.relu(x)
        logit = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        return gamma_from_logit(logit, self.gamma_min, self.gamma_max)
