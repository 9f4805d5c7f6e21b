"""ManyDepth's multi-frame depth network with an HRNet-18 encoder and the DIFFNet decoder.

ManyDepth+ (Shyam et al., Tab. 1: "ManyDepth+, HRNet-18") is ManyDepth with the HRNet-18 backbone.
HRNet is split where ManyDepth splits the ResNet, after the first stride-4 stage:

    current --conv1/bn1 (s2), conv2/bn2 (s2)--> stem1 (1/2, 64), stem2 (1/4, 64)
            --layer1 (4 Bottlenecks)--> f1 [B, H/4, W/4, 256] --(MSFF)--> m --------------+
    lookup  --(same weights, batch statistics, no gradient)--> m_lookup                     |
    cost = cost_volume(m, m_lookup, pose, bins)     [B, H/4, W/4, D], times its confidence     |
    reduce_conv(concat[m, cost]) [B, H/4, W/4, 256]               <--------------------------+
    -> transition1 / stages 2-4 (HRNet-W18) -> DIFFNet groups [stem1], [stem2, s2..4_b0], ...
    -> DIFFNet decoder -> disparities at scales 0..3

* Matching features = layer1's 256 channels (ResNet-18: 64). The paper does not say where its
  HRNet cost volume sits; this mirrors ManyDepth's split after the first stride-4 stage (the
  stem's stem2 would be cheaper at 64 channels but is only two convolutions deep). Price: the
  swept lookup features are 4x larger (B x bins_per_chunk x h x w x 256 floats: 12 x 8 x 48 x
  160 x 256 x 4 B = 755 MB per chunk at 640x192, batch 12, vs 189 MB with ResNet-18).
* ``reduce_conv`` maps 256 + D back to 256 channels, so HRNet's transition1 (256 -> 18 and the
  stride-2 256 -> 36) reads it exactly as it reads layer1 in the single-frame HRNet.
* Multi-scale feature fusion (``msff``, jdepth/models/msff.py) applies unchanged: its inputs are a
  stride-2 map (stem1, 64 ch) and the stride-4 matching map (layer1, now 256 ch), both exist here.
* The DIFFNet groups take stem1 and stem2 of the current frame (before the cost volume), as
  ManyDepth's ResNet decoder takes the stem and the plain layer1 features.

The matching code (lookup features, cost volume, confidence, ``reduce_conv``) is ManyDepth's own
(``jdepth.models.manydepth.fuse_cost_volume``), and the HRNet pieces are jdepth/models/hrnet.py's,
so parameter paths are those of ``HRNetEncoder`` plus ``reduce_conv`` and ``msff``; converted HRNet
weights (``model.encoder_init='params:...'``) load into ``depth/encoder`` the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.models import hrnet
from jdepth.models.diffnet_decoder import DiffNetDecoder
from jdepth.models.manydepth import (
    check_matching_inputs,
    fuse_cost_volume,
    lookup_matching_features,
    matching_settings,
)
from jdepth.models.msff import MultiScaleFusion

Dtype = Any


class HRMatchingEncoder(nn.Module):
    """HRNet-W18 with ManyDepth's plane-sweep cost volume after layer1 (module docstring).

    Attributes:
        num_depth_bins, depth_binning, msff, cost_volume_gradient, matching_border,
        bins_per_chunk: as ``jdepth.models.manydepth.MatchingEncoder``.
        normalize_input: HRNet's ``(x - 0.45) / 0.225`` (see jdepth/models/hrnet.py).
        fuse_upsample: HRNet fusion upsampling, "bilinear" (DIFFNet) or "nearest".
        bn_axis_name: pmap axis for synchronised BatchNorm.
        dtype: computation dtype; parameters float32.
    """

    num_depth_bins: int = 96
    depth_binning: str = "linear"
    msff: bool = False
    cost_volume_gradient: bool = False
    matching_border: int = 2
    bins_per_chunk: int | None = None
    normalize_input: bool = True
    fuse_upsample: str = "bilinear"
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        image: jax.Array,
        lookups: jax.Array,
        poses: jax.Array,
        K: jax.Array,
        inv_K: jax.Array,
        min_depth_bin: jax.Array,
        max_depth_bin: jax.Array,
        train: bool,
    ) -> tuple[list[list[jax.Array]], dict[str, Any]]:
        """Encodes the current frame, matching it against the lookup frames.

        Args: as ``MatchingEncoder.__call__`` (K, inv_K at H/4 x W/4; H, W multiples of 32).

        Returns:
            groups: DIFFNet's five groups (jdepth/models/hrnet.py), channels ``NUM_CH_ENC``.
            aux: ``lowest_cost_depth`` / ``confidence`` ``[B, H/4, W/4, 1]``, ``cost_volume``
                ``[B, H/4, W/4, D]``, ``bins`` ``[D]``, ``matching_features``
                ``[B, H/4, W/4, 256]``, ``pyramid`` [stem1, s4_b0..b3] (strides 2..32).
        """
        hrnet.check_image(image, "HRMatchingEncoder")
        hrnet.check_fuse_upsample(self.fuse_upsample)
        check_matching_inputs("HRMatchingEncoder", image, lookups, poses)
        # Built once and called on both frames: shared weights; in train mode each call uses and
        # updates the BatchNorm statistics in turn, as ManyDepth's ResNet stem and layer1.
        backbone = hrnet.stem_and_layer1(
            self.normalize_input, train, self.bn_axis_name, self.dtype
        )
        fusion = MultiScaleFusion(dtype=self.dtype, name="msff") if self.msff else None

        def extract(x):
            stem1, stem2, f1 = backbone(x)
            matching = fusion(stem1, f1)[0] if fusion is not None else f1
            return stem1, stem2, matching

        stem1, stem2, matching = extract(image)
        lookup_matching = lookup_matching_features(lambda x: extract(x)[2], lookups)
        x, aux = fuse_cost_volume(
            matching, lookup_matching, poses, K, inv_K, min_depth_bin, max_depth_bin,
            **matching_settings(self),
        )
        per_stage = hrnet.high_resolution_stages(
            x, train, self.fuse_upsample, self.bn_axis_name, self.dtype
        )
        groups = hrnet.diffnet_groups(stem1, stem2, per_stage)
        return groups, {**aux, "pyramid": [stem1, *per_stage[-1]]}


class ManyDepthHRNet(nn.Module):
    """Multi-frame depth network: HRMatchingEncoder + DIFFNet's decoder, ManyDepthNet's interface.

    Attributes: as ``HRMatchingEncoder``, plus ``scales`` (disparity output levels).
    """

    scales: Sequence[int] = (0, 1, 2, 3)
    num_depth_bins: int = 96
    depth_binning: str = "linear"
    msff: bool = False
    cost_volume_gradient: bool = False
    matching_border: int = 2
    bins_per_chunk: int | None = None
    normalize_input: bool = True
    fuse_upsample: str = "bilinear"
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        image: jax.Array,
        lookups: jax.Array,
        poses: jax.Array,
        K: jax.Array,
        inv_K: jax.Array,
        min_depth_bin: jax.Array,
        max_depth_bin: jax.Array,
        train: bool,
    ) -> tuple[dict[int, jax.Array], dict[str, Any]]:
        """Predicts multi-scale disparity of ``image`` using the lookup frames.

        Args: as ``ManyDepthNet.__call__``.

        Returns:
            disps: {s: ``[B, H/2^s, W/2^s, 1]`` float32 sigmoid disparity}.
            aux: the encoder's matching aux (as ``ManyDepthNet``), ``encoder_features`` (the 5
                levels stem1, s4_b0..b3 at strides 2..32, channels 64, 18, 36, 72, 144: what the
                panoptic head reads), ``feature_groups`` and ``decoder_features`` {i: 1/2^i}.
        """
        groups, aux = HRMatchingEncoder(
            num_depth_bins=self.num_depth_bins,
            depth_binning=self.depth_binning,
            msff=self.msff,
            cost_volume_gradient=self.cost_volume_gradient,
            matching_border=self.matching_border,
            bins_per_chunk=self.bins_per_chunk,
            normalize_input=self.normalize_input,
            fuse_upsample=self.fuse_upsample,
            bn_axis_name=self.bn_axis_name,
            dtype=self.dtype,
            name="encoder",
        )(image, lookups, poses, K, inv_K, min_depth_bin, max_depth_bin, train)
        disps, dec_aux = DiffNetDecoder(self.scales, dtype=self.dtype, name="decoder")(groups)
        pyramid = aux.pop("pyramid")
        return disps, {
            **aux,
            "encoder_features": pyramid,
            "feature_groups": groups,
            "decoder_features": dec_aux["features"],
        }
