"""ManyDepth's multi-frame depth network: a ResNet encoder with a cost volume after layer1.

    current --conv1/bn1/relu--> stem --maxpool/layer1--> f1 --(MSFF)--> m ----------------+
    lookup  --(same weights, batch statistics, no gradient)--> m_lookup                  |
    cost = cost_volume(m, m_lookup, pose, bins)     [B, H/4, W/4, D], times its confidence  |
    reduce_conv(concat[m, cost]) -> layer2 -> layer3 -> layer4                  <--------+
    features = [stem, f1, layer2, layer3, layer4] -> the Monodepth2 DepthDecoder

Reference: manydepth/networks/resnet_encoder.py ``ResnetEncoderMatching``. As there, the whole
matching (lookup features, cost volume, confidence) carries no gradient: the matching features
learn only through the ``reduce_conv`` path. ``cost_volume_gradient=True`` lets the cost volume
back-propagate into the current frame's matching features (the lookup frame stays without
gradient), an option beyond the reference (it stores the warped volume for the backward pass).
The reference's unused ``prematching_conv`` is not built.

The matching itself (lookup features without gradient, cost volume, confidence, ``reduce_conv``)
is written once, in ``lookup_matching_features`` and ``fuse_cost_volume``, and shared with the
HRNet-18 variant (jdepth/models/manydepth_hrnet.py).

Parameter names follow torchvision inside ``encoder`` (conv1, bn1, layer{L}_{i}), exactly as
``ResNetEncoder``, so ImageNet weights convert the same way; ``reduce_conv`` and ``msff`` are new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth import cost_volume as cv
from jdepth.models.depth_decoder import DepthDecoder
from jdepth.models.layers import torch_default_conv
from jdepth.models.msff import MultiScaleFusion

# The encoder must be split after layer1; these are ResNetEncoder's own building blocks, reused so
# that both encoders have one definition of the torchvision structure and naming.
from jdepth.models.resnet import (
    _INPUT_MEAN,
    _INPUT_STD,
    _STAGE_WIDTHS,
    _STAGES,
    BasicBlock,
    Bottleneck,
    _batch_norm,
    _check_num_layers,
    _conv,
    encoder_channels,
    max_pool_3x3_s2,
)

Dtype = Any

# The cost volume is built at 1/4 of the input resolution (the layer1 output): scale 2 of the
# intrinsics pyramid.
MATCHING_SCALE = 2

# The encoder attributes that configure the matching; every multi-frame encoder has them
# (MatchingEncoder here, HRMatchingEncoder in jdepth/models/manydepth_hrnet.py).
_MATCHING_FIELDS = (
    "num_depth_bins", "depth_binning", "cost_volume_gradient", "matching_border",
    "bins_per_chunk", "dtype",
)


def matching_settings(encoder: nn.Module) -> dict[str, Any]:
    """The keyword arguments of ``fuse_cost_volume`` taken from a multi-frame encoder."""
    return {name: getattr(encoder, name) for name in _MATCHING_FIELDS}


def check_matching_inputs(where: str, image, lookups, poses) -> None:
    """``lookups`` ``[B, N, H, W, 3]`` like ``image`` ``[B, H, W, 3]``, ``poses`` ``[B, N, 4, 4]``."""
    batch, num_lookups = lookups.shape[:2]
    if lookups.shape[2:] != image.shape[1:] or poses.shape != (batch, num_lookups, 4, 4):
        raise ValueError(
            f"{where}: lookups {lookups.shape} must be [B, N, *{image.shape[1:]}] and "
            f"poses {poses.shape} [B, N, 4, 4]"
        )


def lookup_matching_features(extract, lookups: jax.Array) -> jax.Array:
    """Matching features of the lookup frames, without gradient (reference: ``torch.no_grad``).

    Args:
        extract: ``[B', H, W, 3] -> [B', h, w, C]``, the encoder's matching-feature function
            (the same modules as for the current frame: shared weights).
        lookups: ``[B, N, H, W, 3]``.

    Returns:
        ``[B, N, h, w, C]``.
    """
    batch, num_lookups = lookups.shape[:2]
    flat_lookups = lookups.reshape((batch * num_lookups,) + lookups.shape[2:])
    features = jax.lax.stop_gradient(extract(flat_lookups))
    return features.reshape((batch, num_lookups) + features.shape[1:])


def fuse_cost_volume(
    matching: jax.Array,
    lookup_matching: jax.Array,
    poses: jax.Array,
    K: jax.Array,
    inv_K: jax.Array,
    min_depth_bin: jax.Array,
    max_depth_bin: jax.Array,
    *,
    num_depth_bins: int,
    depth_binning: str,
    cost_volume_gradient: bool,
    matching_border: int,
    bins_per_chunk: int | None,
    dtype: Dtype,
) -> tuple[jax.Array, dict[str, Any]]:
    """ManyDepth's cost volume, masked by its confidence and fused back by ``reduce_conv``.

    Call it inside an ``nn.compact`` method: ``reduce_conv`` (3x3, C + D -> C, ReLU) is created in
    the calling module, so its parameters sit at ``<encoder>/reduce_conv`` whatever the backbone.
    The whole matching carries no gradient unless ``cost_volume_gradient`` (module docstring).

    Args:
        matching: ``[B, h, w, C]`` current-frame matching features.
        lookup_matching: ``[B, N, h, w, C]`` (already without gradient).
        poses, K, inv_K, min_depth_bin, max_depth_bin: as ``MatchingEncoder.__call__``.
        num_depth_bins ... dtype: the encoder's attributes (``matching_settings``).

    Returns:
        ``(x [B, h, w, C], aux)`` with the encoder aux of ``MatchingEncoder.__call__``.
    """
    bins = cv.depth_bins(min_depth_bin, max_depth_bin, num_depth_bins, depth_binning)
    current = matching if cost_volume_gradient else jax.lax.stop_gradient(matching)
    cost, cv_aux = cv.cost_volume(
        current.astype(jnp.float32),
        lookup_matching.astype(jnp.float32),
        jax.lax.stop_gradient(poses),
        K,
        inv_K,
        jax.lax.stop_gradient(bins),
        border=matching_border,
        bins_per_chunk=bins_per_chunk,
    )
    confidence = jax.lax.stop_gradient(cv_aux["confidence"])
    masked_cost = (cost * confidence).astype(dtype)

    x = jnp.concatenate([matching, masked_cost], axis=-1)
    reduce = torch_default_conv(
        matching.shape[-1], 3, x.shape[-1], dtype=dtype, name="reduce_conv", padding=1
    )
    x = nn.relu(reduce(x))
    aux = {
        "lowest_cost_depth": jax.lax.stop_gradient(cv_aux["lowest_cost_depth"]),
        "confidence": confidence,
        "cost_volume": cost,
        "bins": bins,
        "matching_features": matching,
    }
    return x, aux


class MatchingEncoder(nn.Module):
    """ResNet encoder with a plane-sweep cost volume after layer1 (``ResnetEncoderMatching``).

    Attributes:
        num_layers: ResNet depth.
        num_depth_bins: D hypotheses (96 in the reference).
        depth_binning: ``'linear'`` (reference default) or ``'inverse'``.
        msff: fuse multi-scale features into the matching features (jdepth/models/msff.py).
        cost_volume_gradient: let the cost volume back-propagate into the current frame's
            matching features (reference: False, the matching carries no gradient).
        matching_border: the validity border of the cost volume, in matching pixels.
        bins_per_chunk: sweep the bins in chunks of this size (memory bound); None: all at once.
        bn_axis_name: pmap axis for synchronised BatchNorm.
        dtype: computation dtype; parameters float32.
    """

    num_layers: int = 18
    num_depth_bins: int = 96
    depth_binning: str = "linear"
    msff: bool = False
    cost_volume_gradient: bool = False
    matching_border: int = 2
    bins_per_chunk: int | None = None
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
    ) -> tuple[list[jax.Array], dict[str, Any]]:
        """Encodes the current frame, matching it against the lookup frames.

        Args:
            image: ``[B, H, W, 3]`` current frame in [0, 1].
            lookups: ``[B, N, H, W, 3]`` lookup frames.
            poses: ``[B, N, 4, 4]`` current -> lookup transforms (all zero: frame skipped).
            K, inv_K: ``[B, 4, 4]`` intrinsics at the matching resolution (H/4 x W/4).
            min_depth_bin, max_depth_bin: scalar range of the depth hypotheses.
            train: BatchNorm batch statistics (apply with ``mutable=["batch_stats"]``).

        Returns:
            features: 5 arrays with channels ``encoder_channels(num_layers)`` at strides 2..32.
            aux: ``lowest_cost_depth`` ``[B, H/4, W/4, 1]``, ``confidence`` ``[B, H/4, W/4, 1]``,
                ``cost_volume`` ``[B, H/4, W/4, D]`` (before the confidence mask), ``bins`` ``[D]``,
                ``matching_features`` ``[B, H/4, W/4, C]``.
        """
        _check_num_layers(self.num_layers)
        check_matching_inputs("MatchingEncoder", image, lookups, poses)
        block_kind, blocks_per_stage = _STAGES[self.num_layers]
        block_cls = BasicBlock if block_kind == "basic" else Bottleneck

        def block(stage, i):
            return block_cls(
                _STAGE_WIDTHS[stage - 1],
                stride=2 if (i == 0 and stage > 1) else 1,
                bn_axis_name=self.bn_axis_name,
                dtype=self.dtype,
                name=f"layer{stage}_{i}",
            )

        # One set of stem/layer1 modules called on both frames: shared weights, and (as in the
        # reference's train mode) each call uses and updates the BatchNorm statistics in turn.
        conv1 = _conv(64, 7, 2, 3, self.dtype, "conv1")
        bn1 = _batch_norm("bn1", train, self.bn_axis_name, self.dtype)
        layer1 = [block(1, i) for i in range(blocks_per_stage[0])]
        fusion = MultiScaleFusion(dtype=self.dtype, name="msff") if self.msff else None

        def extract(x):
            x = ((x.astype(jnp.float32) - _INPUT_MEAN) / _INPUT_STD).astype(self.dtype)
            stem = nn.relu(bn1(conv1(x)))
            f1 = max_pool_3x3_s2(stem)
            for module in layer1:
                f1 = module(f1, train)
            matching = fusion(stem, f1)[0] if fusion is not None else f1
            return stem, f1, matching

        stem, f1, matching = extract(image)
        lookup_matching = lookup_matching_features(lambda x: extract(x)[2], lookups)
        x, aux = fuse_cost_volume(
            matching, lookup_matching, poses, K, inv_K, min_depth_bin, max_depth_bin,
            **matching_settings(self),
        )
        features = [stem, f1]
        for stage in (2, 3, 4):
            for i in range(blocks_per_stage[stage - 1]):
                x = block(stage, i)(x, train)
            features.append(x)
        return features, aux


class ManyDepthNet(nn.Module):
    """Multi-frame depth network: MatchingEncoder + the Monodepth2 DepthDecoder.

    Attributes: as ``MatchingEncoder``, plus ``scales`` (disparity output levels).
    """

    num_layers: int = 18
    scales: Sequence[int] = (0, 1, 2, 3)
    num_depth_bins: int = 96
    depth_binning: str = "linear"
    msff: bool = False
    cost_volume_gradient: bool = False
    matching_border: int = 2
    bins_per_chunk: int | None = None
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

        Args: as ``MatchingEncoder.__call__``; H and W must be multiples of 32.

        Returns:
            disps: {s: ``[B, H/2^s, W/2^s, 1]`` float32 sigmoid disparity}.
            aux: the encoder's aux plus ``encoder_features`` and ``decoder_features``.
        """
        if image.ndim != 4 or image.shape[1] % 32 or image.shape[2] % 32:
            raise ValueError(
                "ManyDepthNet needs [B, H, W, 3] images with H and W multiples of 32, got "
                f"{image.shape}"
            )
        features, aux = MatchingEncoder(
            num_layers=self.num_layers,
            num_depth_bins=self.num_depth_bins,
            depth_binning=self.depth_binning,
            msff=self.msff,
            cost_volume_gradient=self.cost_volume_gradient,
            matching_border=self.matching_border,
            bins_per_chunk=self.bins_per_chunk,
            bn_axis_name=self.bn_axis_name,
            dtype=self.dtype,
            name="encoder",
        )(image, lookups, poses, K, inv_K, min_depth_bin, max_depth_bin, train)
        disps, dec_aux = DepthDecoder(
            encoder_channels(self.num_layers), self.scales, dtype=self.dtype, name="decoder"
        )(features)
        return disps, {**aux, "encoder_features": features, "decoder_features": dec_aux["features"]}
