"""Monodepth2 depth decoder and the DepthNet (ResNet encoder + decoder).

Level i runs from 4 (1/32 input) down to 0 (full resolution):

    x = upconv_{i}_0(x)                       ConvBlock, 512 (i=4) or dec[i+1] -> dec[i]
    x = upsample_nearest_2x(x)
    x = concat([x, features[i-1]]) if i > 0   skip from the encoder (upsampled part first)
    x = upconv_{i}_1(x)                       ConvBlock -> dec[i], at 1/2^i of the input
    disp_i = sigmoid(dispconv_{i}(x))         Conv3x3 -> 1, only for i in `scales`

with dec = (16, 32, 64, 128, 256). The reference stores these convolutions in one ModuleList
`decoder` in creation order, so the PyTorch key of each module is:

    upconv_4_0 -> decoder.0    upconv_4_1 -> decoder.1    upconv_3_0 -> decoder.2 ...
    upconv_0_0 -> decoder.8    upconv_0_1 -> decoder.9
    dispconv_{scales[k]} -> decoder.{10 + k}   (scales in the order given, default 0, 1, 2, 3)

and inside, `upconv_*/conv/conv/{kernel,bias}` <-> `decoder.N.conv.conv.{weight,bias}`,
`dispconv_*/conv/{kernel,bias}` <-> `decoder.N.conv.{weight,bias}` (see layers.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.models.layers import Conv3x3, ConvBlock, upsample_nearest_2x
from jdepth.models.resnet import ResNetEncoder, encoder_channels

Dtype = Any

NUM_CH_DEC = (16, 32, 64, 128, 256)


def decoder_torch_index(name: str, scales: Sequence[int] = (0, 1, 2, 3)) -> int:
    """Index N of the reference key `decoder.N` for a DepthDecoder submodule name.

    Args:
        name: `"upconv_{i}_{j}"` or `"dispconv_{s}"`.
        scales: the decoder's scales, in the order the reference was built with.

    Returns:
        The ModuleList index.
    """
    kind, *idx = name.split("_")
    if kind == "upconv" and len(idx) == 2:
        level, j = int(idx[0]), int(idx[1])
        return 2 * (4 - level) + j
    if kind == "dispconv" and len(idx) == 1:
        return 10 + list(scales).index(int(idx[0]))
    raise ValueError(f"jdepth/models/depth_decoder.py: not a decoder module name: {name!r}")


class DepthDecoder(nn.Module):
    """Multi-scale sigmoid disparity decoder (Monodepth2's DepthDecoder).

    Attributes:
        num_ch_enc: channels of the 5 encoder features, e.g. `encoder_channels(18)`.
        scales: levels that get a disparity head.
        num_output_channels: channels of each disparity map.
        use_skips: concatenate encoder features (levels 1-4).
        dtype: computation dtype; disparities are returned in float32.
    """

    num_ch_enc: Sequence[int]
    scales: Sequence[int] = (0, 1, 2, 3)
    num_output_channels: int = 1
    use_skips: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, features: Sequence[jax.Array]
    ) -> tuple[dict[int, jax.Array], dict[str, Any]]:
        """Decodes encoder features into disparities.

        Args:
            features: 5 arrays `[B, H/2^(l+1), W/2^(l+1), num_ch_enc[l]]`, l = 0..4.

        Returns:
            disps: {s: `[B, H/2^s, W/2^s, num_output_channels]` float32 in (0, 1)} for s in scales.
            aux: {"features": {i: `[B, H/2^i, W/2^i, NUM_CH_DEC[i]]`}} - the upconv_{i}_1 outputs
                for i = 0..4, in `dtype` (cast before using them in a loss).
        """
        self._check_features(features)
        disps, level_features = {}, {}
        x = features[-1]
        for i in range(4, -1, -1):
            x = ConvBlock(NUM_CH_DEC[i], dtype=self.dtype, name=f"upconv_{i}_0")(x)
            x = upsample_nearest_2x(x)
            if self.use_skips and i > 0:
                x = jnp.concatenate([x, features[i - 1].astype(x.dtype)], axis=-1)
            x = ConvBlock(NUM_CH_DEC[i], dtype=self.dtype, name=f"upconv_{i}_1")(x)
            level_features[i] = x
            if i in self.scales:
                dispconv = Conv3x3(self.num_output_channels, dtype=self.dtype, name=f"dispconv_{i}")
                logits = dispconv(x)
                disps[i] = jax.nn.sigmoid(logits.astype(jnp.float32))
        return disps, {"features": level_features}

    def _check_features(self, features: Sequence[jax.Array]) -> None:
        where = "jdepth/models/depth_decoder.py: DepthDecoder"
        if len(self.num_ch_enc) != 5 or len(features) != 5:
            raise ValueError(
                f"{where} needs 5 encoder levels, got num_ch_enc={tuple(self.num_ch_enc)} and "
                f"{len(features)} features"
            )
        bad_scales = [s for s in self.scales if s not in range(5)]
        if bad_scales:
            raise ValueError(f"{where}: scales must lie in 0..4, got {tuple(self.scales)}")
        for level, (f, ch) in enumerate(zip(features, self.num_ch_enc)):
            if f.ndim != 4 or f.shape[-1] != ch:
                raise ValueError(
                    f"{where}: feature {level} should be [B, h, w, {ch}], got shape {f.shape}"
                )
        for level in range(1, 5):
            small, big = features[level].shape[1:3], features[level - 1].shape[1:3]
            if (2 * small[0], 2 * small[1]) != tuple(big):
                raise ValueError(
                    f"{where}: feature {level} is {small} but feature {level - 1} is {big}; each "
                    "level must be exactly half the previous one (input H and W multiples of 32)"
                )


class DepthNet(nn.Module):
    """Monodepth2 depth network: ResNet encoder + DepthDecoder.

    Attributes:
        num_layers: ResNet depth (18, 34, 50, ...).
        scales: disparity output levels.
        bn_axis_name: pmap axis for synchronised BatchNorm (None: per-device statistics).
        dtype: computation dtype; parameters float32, disparities float32.
    """

    num_layers: int = 18
    scales: Sequence[int] = (0, 1, 2, 3)
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, image: jax.Array, train: bool
    ) -> tuple[dict[int, jax.Array], dict[str, Any]]:
        """Predicts multi-scale disparity.

        Args:
            image: `[B, H, W, 3]` in [0, 1], H and W multiples of 32.
            train: batch statistics in BatchNorm (apply with `mutable=["batch_stats"]`).

        Returns:
            disps: {s: `[B, H/2^s, W/2^s, 1]` float32 sigmoid disparity}.
            aux: {"encoder_features": list of 5 encoder arrays,
                  "decoder_features": {i: upconv_{i}_1 output at 1/2^i}} in `dtype`.
        """
        if image.ndim != 4 or image.shape[1] % 32 or image.shape[2] % 32:
            raise ValueError(
                "jdepth/models/depth_decoder.py: DepthNet needs [B, H, W, 3] images with H and W "
                f"multiples of 32, got shape {image.shape}"
            )
        features, _ = ResNetEncoder(
            self.num_layers, 1, self.bn_axis_name, self.dtype, name="encoder"
        )(image, train)
        disps, dec_aux = DepthDecoder(
            encoder_channels(self.num_layers), self.scales, dtype=self.dtype, name="decoder"
        )(features)
        return disps, {"encoder_features": features, "decoder_features": dec_aux["features"]}
