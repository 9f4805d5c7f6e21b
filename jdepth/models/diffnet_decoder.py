"""DIFFNet's decoder and HRDepthNet (HRNet-18 encoder + that decoder, + optional scale head).

DIFFNet (brandleyzhou/DIFFNet networks/HR_Depth_Decoder.py; REFERENCE_FACTS 3.2) fuses the
HRNet feature groups (jdepth/models/hrnet.py) top-down with channel-attention modules:

    x72 = fuse_72(high=groups[4], lows=groups[3])   (144 up + 2 x 72)      -> 256 @ 1/16
    x36 = fuse_36(x72, groups[2])                   (256 up + 3 x 36)      -> 128 @ 1/8
    x18 = fuse_18(x36, groups[1])                   (128 up + 64 + 3 x 18) ->  64 @ 1/4
    x9  = fuse_9 (x18, groups[0])                   ( 64 up + 64)          ->  32 @ 1/2
    x6  = up_x9_1(upsample(up_x9_0(x9)))            ConvBlocks 32 -> 16 -> 16 @ 1/1
    disp_s = sigmoid(dispconv_s(.)) from x6, x9, x18, x36 for s = 0, 1, 2, 3

A fusion module: nearest x2 upsampling of `high`, concatenation with `lows`, channel attention
(global average pool -> FC C -> C/16 -> ReLU -> FC -> sigmoid, both FCs without bias; a channel-
wise gate), then 3x3 conv (zero padding, bias) + ReLU. ConvBlock / dispconv are Monodepth2's
(reflection padding). Names mirror the reference's `convs` keys: fuse_72 <-> convs["72"]
(`fc1`, `fc2` <-> fc.0, fc.2; `conv` <-> conv_se), up_x9_0/1, dispconv_s <-> dispConvScale{s}.

The decoder levels have Monodepth2's channels (16, 32, 64, 128, 256 at 1/1 .. 1/16), so the
decoder features that the contrastive loss reads (`aux["decoder_features"][i]`, 1/2^i) have the
same shapes as with the ResNet DepthNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.models.hrnet import NUM_CH_ENC, HRNetEncoder
from jdepth.models.layers import (
    Conv3x3,
    ConvBlock,
    torch_default_conv,
    torch_default_kernel_init,
    upsample_nearest_2x,
)
from jdepth.models.scale_head import GAMMA_MAX, GAMMA_MIN, ScaleHead

Dtype = Any

NUM_CH_DEC = (16, 32, 64, 128, 256)
ATTENTION_REDUCTION = 16
# (name, decoder level of the output, output channels); the lows come from groups[3], [2], [1], [0].
_FUSIONS = (("fuse_72", 4, 256), ("fuse_36", 3, 128), ("fuse_18", 2, 64), ("fuse_9", 1, 32))


class AttentionFusion(nn.Module):
    """DIFFNet's Attention_Module: upsample, concatenate, channel attention, 3x3 conv + ReLU.

    Attributes:
        features: output channels.
        reduction: squeeze ratio of the channel attention.
        dtype: computation dtype.
    """

    features: int
    reduction: int = ATTENTION_REDUCTION
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, high: jax.Array, lows: Sequence[jax.Array]) -> jax.Array:
        """`high` `[B, h, w, Ch]` and lows `[B, 2h, 2w, C_k]` -> `[B, 2h, 2w, features]`."""
        x = jnp.concatenate(
            [upsample_nearest_2x(high)] + [low.astype(high.dtype) for low in lows], axis=-1
        )
        c = x.shape[-1]

        def fc(out, name):  # torch.nn.Linear(bias=False) initialisation
            return nn.Dense(out, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                            kernel_init=torch_default_kernel_init, name=name)

        gate = jnp.mean(x, axis=(1, 2))
        gate = fc(c, "fc2")(nn.relu(fc(c // self.reduction, "fc1")(gate)))
        x = x * jax.nn.sigmoid(gate)[:, None, None, :]
        conv = torch_default_conv(self.features, 3, c, dtype=self.dtype, name="conv", padding=1)
        return nn.relu(conv(x))


class DiffNetDecoder(nn.Module):
    """Multi-scale sigmoid disparity decoder on HRNet feature groups (module docstring).

    Attributes:
        scales: levels that get a disparity head (subset of 0..3).
        num_output_channels: channels of each disparity map.
        dtype: computation dtype; disparities are returned in float32.
    """

    scales: Sequence[int] = (0, 1, 2, 3)
    num_output_channels: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, groups: Sequence[Sequence[jax.Array]]
    ) -> tuple[dict[int, jax.Array], dict[str, Any]]:
        """Decodes HRNet feature groups into disparities.

        Args:
            groups: the five groups of `HRNetEncoder` (lists; group g at 1/2^(g+1)).

        Returns:
            disps: {s: `[B, H/2^s, W/2^s, num_output_channels]` float32 in (0, 1)} for s in scales.
            aux: {"features": {i: `[B, H/2^i, W/2^i, NUM_CH_DEC[i]]`} for i = 0..4} in `dtype`.
        """
        self._check(groups)
        level_features = {}
        x = groups[4][0]
        for (name, level, features), lows in zip(_FUSIONS, (groups[3], groups[2], groups[1],
                                                            groups[0])):
            x = AttentionFusion(features, dtype=self.dtype, name=name)(x, lows)
            level_features[level] = x
        x = ConvBlock(NUM_CH_DEC[0], dtype=self.dtype, name="up_x9_0")(level_features[1])
        x = ConvBlock(NUM_CH_DEC[0], dtype=self.dtype, name="up_x9_1")(upsample_nearest_2x(x))
        level_features[0] = x
        disps = {}
        for s in sorted(self.scales):
            logits = Conv3x3(self.num_output_channels, dtype=self.dtype, name=f"dispconv_{s}")(
                level_features[s]
            )
            disps[s] = jax.nn.sigmoid(logits.astype(jnp.float32))
        return disps, {"features": dict(sorted(level_features.items()))}

    def _check(self, groups) -> None:
        where = "jdepth/models/diffnet_decoder.py: DiffNetDecoder"
        if len(groups) != 5:
            raise ValueError(f"{where} needs the 5 HRNet feature groups, got {len(groups)}")
        if any(s not in range(4) for s in self.scales):
            raise ValueError(f"{where}: scales must lie in 0..3, got {tuple(self.scales)}")
        for g, (group, ch) in enumerate(zip(groups, NUM_CH_ENC)):
            if not group or group[-1].shape[-1] != ch:
                raise ValueError(
                    f"{where}: group {g} should end with a {ch}-channel feature, got "
                    f"{[f.shape for f in group]}"
                )


class HRDepthNet(nn.Module):
    """HRNet-18 + DIFFNet decoder with DepthNet's call signature, plus an optional scale head.

    Attributes:
        scales: disparity output levels.
        normalize_input: the encoder's `(x - 0.45) / 0.225` (see jdepth/models/hrnet.py).
        scale_head: add the global scale head (Student-II) on the deepest encoder feature.
        scale_head_features, gamma_min, gamma_max: its hidden width and the range of its
            per-image factor around the learnt global scale (the head reads the deepest encoder
            feature under stop_gradient: jdepth/models/scale_head.py).
        bn_axis_name: pmap axis for synchronised BatchNorm (None: per-device statistics).
        dtype: computation dtype; parameters float32, disparities float32.
    """

    scales: Sequence[int] = (0, 1, 2, 3)
    normalize_input: bool = True
    scale_head: bool = False
    scale_head_features: int = 128
    gamma_min: float = GAMMA_MIN
    gamma_max: float = GAMMA_MAX
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, image: jax.Array, train: bool
    ) -> tuple[dict[int, jax.Array], dict[str, Any]]:
        """Predicts multi-scale disparity (and the global scale).

        Args:
            image: `[B, H, W, 3]` in [0, 1], H and W multiples of 32.
            train: batch statistics in BatchNorm (apply with `mutable=["batch_stats"]`).

        Returns:
            disps: {s: `[B, H/2^s, W/2^s, 1]` float32 sigmoid disparity}.
            aux: {"encoder_features": 5 arrays at strides 2..32 (stem, the 4 HRNet branches),
                  "feature_groups": the DIFFNet groups, "decoder_features": {i: 1/2^i level}}
                 and, with the scale head, "scale": gamma `[B]` float32.
        """
        groups, enc_aux = HRNetEncoder(
            self.normalize_input, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
            name="encoder",
        )(image, train)
        disps, dec_aux = DiffNetDecoder(self.scales, dtype=self.dtype, name="decoder")(groups)
        aux = {
            "encoder_features": enc_aux["pyramid"],
            "feature_groups": groups,
            "decoder_features": dec_aux["features"],
        }
        if self.scale_head:
            aux["scale"] = ScaleHead(
                self.scale_head_features, self.gamma_min, self.gamma_max, dtype=self.dtype,
                name="scale_head",
            )(enc_aux["pyramid"][-1])
        return disps, aux
