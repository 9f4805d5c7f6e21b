"""Multi-scale feature fusion (MSFF) for the matching features of a multi-frame depth network.

Shyam et al. (Sec. 3.5, Fig. 5) add a fusion of multi-scale features to the features that the cost
volume compares, because under forward camera motion the same object has a different image size
in the current and the lookup frame, and single-scale convolutional features do not match well
across that change. The paper's Appendix E (the actual design) is not available, so this is our
own design (DESIGN.md item 6):

    stem  [B, H/2, W/2, 64] --3x3 s2 conv + ReLU--------------------------> fine   [., H/4, ., 32]
    layer1 [B, H/4, W/4, 64] --avg-pool x2 -- 3x3 conv + ReLU -- up x2 ----> ctx_8  [., H/4, ., 32]
                             --avg-pool x4 -- 3x3 conv + ReLU -- up x4 ----> ctx_16 [., H/4, ., 32]
    fused = layer1 + 1x1 conv(concat[layer1, fine, ctx_8, ctx_16])       (conv zero-initialised)

* ``fine`` brings back the detail the max-pool threw away (sharper localisation of the match);
* ``ctx_8`` and ``ctx_16`` see the same structure with 2x and 4x larger receptive fields, so a
  feature of an object that grew between frames still has a similar component in both views;
* the residual form with a zero-initialised output conv makes MSFF start as the identity: at
  initialisation the model is exactly ManyDepth, and training only adds what helps. Upsampling is
  bilinear (half-pixel centres) so the context does not add block edges the L1 cost would match.

The fused map replaces the layer1 features wherever ManyDepth uses them for matching: in the cost
volume (both frames, shared weights; the lookup frame without gradient) and in the ``reduce_conv``
input that concatenates features and cost volume. The encoder's level-1 skip connection to the
decoder stays the plain layer1 output, as in ManyDepth.

With the HRNet-18 multi-frame network (jdepth/models/manydepth_hrnet.py) the inputs are HRNet's
stem1 (64 ch at 1/2) and layer1 (256 ch at 1/4): same branches, the fuse conv maps 256 + 96 -> 256
(256,352 parameters instead of 65,696 on ResNet-18).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.geometry import upsample_disp
from jdepth.models.layers import torch_default_conv, torch_default_kernel_init

Dtype = Any


class MultiScaleFusion(nn.Module):
    """Fuses stride-2, stride-4 and pooled stride-8/16 features into stride-4 matching features.

    Attributes:
        branch_features: channels of each extra branch.
        context_factors: pooling factors (relative to the 1/4 map) of the context branches.
        dtype: computation dtype; parameters float32.
    """

    branch_features: int = 32
    context_factors: tuple[int, ...] = (2, 4)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, stem: jax.Array, layer1: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """Fuses the two encoder levels.

        Args:
            stem: ``[B, 2h, 2w, C0]`` conv1/bn/relu output (1/2 of the input).
            layer1: ``[B, h, w, C]`` layer1 output (1/4 of the input); h, w divisible by the
                largest context factor.

        Returns:
            ``(fused [B, h, w, C], aux)``; ``aux["branches"]`` holds the branch maps.
        """
        batch, height, width, channels = layer1.shape
        if stem.shape[1:3] != (2 * height, 2 * width):
            raise ValueError(
                f"MultiScaleFusion: stem {stem.shape} must be twice the size of layer1 "
                f"{layer1.shape}"
            )
        for factor in self.context_factors:
            if height % factor or width % factor:
                raise ValueError(
                    f"MultiScaleFusion: layer1 size {height}x{width} must divide by {factor}"
                )
        f = self.branch_features
        fine = nn.Conv(
            f, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
            param_dtype=jnp.float32, kernel_init=torch_default_kernel_init, name="fine_conv",
        )(stem.astype(self.dtype))
        branches = {"fine": nn.relu(fine)}
        for factor in self.context_factors:
            pooled = nn.avg_pool(layer1, (factor, factor), strides=(factor, factor))
            conv = torch_default_conv(
                f, 3, channels, dtype=self.dtype, name=f"context{factor}_conv", padding=1
            )
            context = nn.relu(conv(pooled))
            branches[f"context{factor}"] = upsample_disp(context, height, width)
        stacked = jnp.concatenate([layer1] + list(branches.values()), axis=-1)
        # Zero-initialised: MSFF is the identity at initialisation (module docstring).
        fuse = nn.Conv(
            channels, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros, name="fuse_conv",
        )
        return layer1 + fuse(stacked).astype(layer1.dtype), {"branches": branches}
