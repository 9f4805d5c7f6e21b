"""YOSO-style panoptic head on the shared depth encoder (Hu et al., CVPR'23; DESIGN.md item 2).

    encoder features at strides 4, 8, 16, 32 (ResNet: layer1..layer4; HRNet: its 4 branches)
      -> FeatureAggregator: lateral 1x1 convs (C -> C/2), top-down conv3x3 + deconv x2 layers,
         each level 1x1 -> agg_dim, bilinear to stride 4, sum + bias, conv3x3,
         + (x, y) coordinate channels, 1x1 -> hidden_dim             [B, H/4, W/4, hidden]
      -> stage 0: N learnt proposal kernels (a 1x1 conv hidden -> N); masks only
      -> stages 1..S (KernelUpdateStage): hard-mask pooling, two separable dynamic convolutions
         (DySepConvAtten), self-attention over proposals, FFN, then class logits (C + 1, last =
         no-object, divided by a temperature) and new kernels; masks = kernels . features.

Deviations from YOSO's code (hujiecpp/YOSO projects/YOSO/yoso/{neck,head}.py), all deliberate:
* Plain 3x3 convolutions replace the modulated deformable ones (DESIGN.md allows it; JAX has no
  deformable convolution kernel).
* GroupNorm replaces the aggregator's SyncBatchNorm (YOSO's code lists GroupNorm as its
  alternative). The head is an auxiliary branch plugged into recipes through a loss hook: a
  batch-independent norm needs no running statistics in the train state and gives the same
  numbers on N devices as on one, which SyncBN would only give with an extra axis plumbing.
* Initialisation: aggregator kernels xavier-uniform (YOSO's neck re-initialises every weight
  matrix that way, which also overwrites its bilinear deconv init), biases zero; head Linear
  layers truncated normal 0.02 with zero bias, the class bias -log(99) (prior 0.01); stage-0
  kernels as torch.nn.Conv2d. LayerNorm eps 1e-5 (torch's).
* Attention (q/k/v/out) kernels are all xavier-uniform (torch initialises out_proj differently).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.models.layers import torch_default_bias_init, torch_default_kernel_init

Dtype = Any

_xavier = nn.initializers.xavier_uniform()
_trunc_normal = nn.initializers.truncated_normal(0.02)
_LN_EPS = 1e-5
# Class-logit bias of a 1 % prior, as YOSO (and RetinaNet) initialise their classifiers.
_CLASS_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


def _group_norm(channels: int, dtype: Dtype, name: str) -> nn.GroupNorm:
    # Up to 16 groups that divide the channels (HRNet's 9-channel halves get 1 group).
    return nn.GroupNorm(num_groups=math.gcd(16, channels), epsilon=_LN_EPS, dtype=dtype, name=name)


def _dense(features: int, dtype: Dtype, name: str, use_bias: bool = True, bias_init=None):
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=_trunc_normal, bias_init=bias_init or nn.initializers.zeros, name=name,
    )


def _layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=_LN_EPS, dtype=dtype, param_dtype=jnp.float32, name=name)


def coordinate_channels(batch: int, height: int, width: int, dtype: Dtype) -> jax.Array:
    """(x, y) channels, each linspace(-1, 1) along its axis: [B, H, W, 2]."""
    y, x = jnp.meshgrid(
        jnp.linspace(-1.0, 1.0, height), jnp.linspace(-1.0, 1.0, width), indexing="ij"
    )
    coords = jnp.stack([x, y], axis=-1).astype(dtype)
    return jnp.broadcast_to(coords[None], (batch, height, width, 2))


class UpLayer(nn.Module):
    """YOSO's DeformLayer without the deformation: conv3x3 + GN + ReLU + deconv4x4/2 + GN + ReLU."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, h, w, C_in] -> [B, 2h, 2w, features]."""
        x = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                    kernel_init=_xavier, name="conv")(x)
        x = nn.relu(_group_norm(self.features, self.dtype, "conv_norm")(x))
        # torch ConvTranspose2d(k=4, s=2, p=1) == lax padding k - 1 - p = 2 on the dilated input:
        # output 2h, each output pixel fed symmetrically by the input pixel it lies in.
        x = nn.ConvTranspose(self.features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                             use_bias=False, dtype=self.dtype, kernel_init=_xavier, name="up")(x)
        return nn.relu(_group_norm(self.features, self.dtype, "up_norm")(x))


class FeatureAggregator(nn.Module):
    """YOSO's neck (LiteDeformConv "CFA" path + coordinate conv): 4 levels -> one stride-4 map.

    Attributes:
      agg_dim: channels of the aggregated map (YOSO: 128).
      hidden_dim: output channels (YOSO: 256).
    """

    agg_dim: int = 128
    hidden_dim: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        """4 arrays [B, H/s, W/s, C_l] for s = 4, 8, 16, 32 -> [B, H/4, W/4, hidden_dim]."""
        if len(features) != 4:
            raise ValueError(
                f"jdepth/models/panoptic_head.py: the aggregator takes 4 levels (strides 4..32), "
                f"got {len(features)}"
            )
        features = [f.astype(self.dtype) for f in features]
        half = [f.shape[-1] // 2 for f in features]

        def conv1x1(out: int, name: str, bias: bool = True):
            return nn.Conv(out, (1, 1), use_bias=bias, dtype=self.dtype, kernel_init=_xavier,
                           name=name)

        # Top-down: the coarsest lateral, then lateral(l) + up(level l + 1) for l = 2, 1, 0.
        levels = [None] * 4
        levels[3] = conv1x1(half[3], "lateral_3")(features[3])
        for level in (2, 1, 0):
            up = UpLayer(half[level], dtype=self.dtype, name=f"up_{level + 1}")(levels[level + 1])
            levels[level] = conv1x1(half[level], f"lateral_{level}")(features[level]) + up
        batch, height, width = levels[0].shape[:3]
        x = 0.0
        for level, feat in enumerate(levels):
            feat = conv1x1(self.agg_dim, f"agg_{level}", bias=False)(feat)
            if level:
                # bilinear, half-pixel centres (torch align_corners=False), edge-clamped.
                feat = jax.image.resize(feat, (batch, height, width, self.agg_dim), "bilinear")
            x = x + feat
        x = x + self.param("agg_bias", nn.initializers.zeros, (self.agg_dim,), jnp.float32)
        x = nn.Conv(self.agg_dim, (3, 3), padding=1, dtype=self.dtype, kernel_init=_xavier,
                    name="output_conv")(x)
        x = jnp.concatenate([x, coordinate_channels(batch, height, width, x.dtype)], axis=-1)
        return conv1x1(self.hidden_dim, "coord_conv")(x)


class DySepConvAtten(nn.Module):
    """Separable dynamic convolution over proposals (YOSO's DySepConvAtten).

    A Linear on the query gives each proposal a K-tap depthwise kernel (applied along the channel
    axis of the value, 'same' padding) and N pointwise weights that then mix the proposals.
    """

    num_proposals: int
    kernel_size: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query: jax.Array, value: jax.Array) -> jax.Array:
        """query, value: [B, N, C] -> [B, N, C] (layer-normalised)."""
        n, k = self.num_proposals, self.kernel_size
        weights = _dense(n + k, self.dtype, "weight_linear")(query)
        depthwise, pointwise = weights[..., :k], weights[..., k:]
        pad = (k - 1) // 2
        padded = jnp.pad(value, ((0, 0), (0, 0), (pad, k - 1 - pad)))
        channels = value.shape[-1]
        # Cross-correlation as torch.conv1d: out[c] = sum_t w[t] * x[c + t - pad].
        out = sum(depthwise[..., t, None] * padded[..., t:t + channels] for t in range(k))
        out = jnp.einsum("bnm,bmc->bnc", pointwise, nn.relu(out))
        return _layer_norm(self.dtype, "norm")(out)


class KernelUpdateStage(nn.Module):
    """One stage of YOSO's head (CrossAttenHead): refine kernels, predict classes and masks."""

    num_classes: int
    num_proposals: int
    hidden_dim: int = 256
    ffn_dim: int = 2048
    num_heads: int = 8
    num_cls_fcs: int = 3
    num_mask_fcs: int = 3
    kernel_size: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, kernels: jax.Array, mask_logits: jax.Array):
        """Refines the kernels of the previous stage.

        Args:
          features: [B, h, w, C] the aggregated map.
          kernels: [B, N, C] the previous stage's proposal kernels.
          mask_logits: [B, h, w, N] the previous stage's masks.

        Returns:
          (class_logits [B, N, num_classes + 1] before the temperature, mask_logits
          [B, h, w, N], new kernels [B, N, C]).
        """
        # Hard masks (sigmoid > 0.5) pool the features: a sum, as YOSO; the LayerNorms below make
        # the result independent of the mask area's scale. No gradient flows through the mask.
        hard = (jax.lax.stop_gradient(mask_logits) > 0).astype(features.dtype)
        pooled = jnp.einsum("bhwn,bhwc->bnc", hard, features)
        kernels = kernels.astype(self.dtype)
        f = pooled + DySepConvAtten(self.num_proposals, self.kernel_size, self.dtype,
                                    name="f_atten")(kernels, pooled)
        f = _layer_norm(self.dtype, "f_atten_norm")(f)
        f = f + DySepConvAtten(self.num_proposals, self.kernel_size, self.dtype,
                               name="k_atten")(kernels, f)
        k = _layer_norm(self.dtype, "k_atten_norm")(f)
        attn = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, kernel_init=_xavier, name="s_atten"
        )(k, k)
        k = _layer_norm(self.dtype, "s_atten_norm")(k + attn)
        ffn = _dense(self.ffn_dim, self.dtype, "ffn_0")(k)
        ffn = _dense(self.hidden_dim, self.dtype, "ffn_1")(nn.relu(ffn))
        obj = _layer_norm(self.dtype, "ffn_norm")(k + ffn)

        cls_feat, mask_feat = obj, obj
        for i in range(self.num_cls_fcs):
            cls_feat = _dense(self.hidden_dim, self.dtype, f"cls_fc_{i}", use_bias=False)(cls_feat)
            cls_feat = nn.relu(_layer_norm(self.dtype, f"cls_norm_{i}")(cls_feat))
        bias_init = nn.initializers.constant(_CLASS_PRIOR_BIAS)
        class_logits = _dense(self.num_classes + 1, self.dtype, "fc_cls", bias_init=bias_init)(
            cls_feat
        )
        for i in range(self.num_mask_fcs):
            mask_feat = _dense(self.hidden_dim, self.dtype, f"mask_fc_{i}", use_bias=False)(
                mask_feat
            )
            mask_feat = nn.relu(_layer_norm(self.dtype, f"mask_norm_{i}")(mask_feat))
        mask_kernels = _dense(self.hidden_dim, self.dtype, "fc_mask")(mask_feat)
        new_masks = jnp.einsum("bnc,bhwc->bhwn", mask_kernels, features)
        return class_logits.astype(jnp.float32), new_masks.astype(jnp.float32), obj


class PanopticHead(nn.Module):
    """Aggregator + proposal kernels + `num_stages` kernel-update stages.

    Attributes:
      num_classes: foreground classes (19); logits have one more, the last = no-object.
      num_proposals: N proposal kernels (YOSO: 100).
      hidden_dim, agg_dim, ffn_dim, num_heads, num_cls_fcs, num_mask_fcs, kernel_size: as YOSO
        (256, 128, 2048, 8; 3 / 3 FCs in its Cityscapes config; 1-D kernel 3).
      num_stages: kernel-update stages after stage 0 (YOSO: 2).
      temperature: class logits are divided by it (YOSO's Cityscapes config: 0.05).
    """

    num_classes: int = 19
    num_proposals: int = 100
    hidden_dim: int = 256
    agg_dim: int = 128
    num_stages: int = 2
    ffn_dim: int = 2048
    num_heads: int = 8
    num_cls_fcs: int = 3
    num_mask_fcs: int = 3
    kernel_size: int = 3
    temperature: float = 0.05
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[list[dict], dict[str, jax.Array]]:
        """Predicts masks (every stage) and classes (stages >= 1).

        Args:
          features: 4 encoder maps [B, H/s, W/s, C_l], s = 4, 8, 16, 32.

        Returns:
          stages: list of num_stages + 1 dicts; each has "mask_logits" [B, H/4, W/4, N] float32,
            and every stage but the first "class_logits" [B, N, num_classes + 1] float32 (already
            divided by the temperature).
          aux: {"features": [B, H/4, W/4, hidden_dim]} the aggregated map.
        """
        x = FeatureAggregator(self.agg_dim, self.hidden_dim, self.dtype, name="aggregator")(
            features
        )
        # Stage 0: the proposal kernels are the weights of a 1x1 conv (with bias) hidden -> N.
        fan_in = self.hidden_dim
        kernels = self.param("proposal_kernels", torch_default_kernel_init,
                             (self.hidden_dim, self.num_proposals), jnp.float32)
        bias = self.param("proposal_bias", torch_default_bias_init(fan_in),
                          (self.num_proposals,), jnp.float32)
        masks = (jnp.einsum("bhwc,cn->bhwn", x, kernels.astype(x.dtype)) + bias).astype(
            jnp.float32
        )
        stages = [{"mask_logits": masks}]
        kernels = jnp.broadcast_to(kernels.T[None], (x.shape[0],) + kernels.T.shape)
        for s in range(1, self.num_stages + 1):
            class_logits, masks, kernels = KernelUpdateStage(
                self.num_classes, self.num_proposals, self.hidden_dim, self.ffn_dim,
                self.num_heads, self.num_cls_fcs, self.num_mask_fcs, self.kernel_size,
                self.dtype, name=f"stage_{s}",
            )(x, kernels, masks)
            stages.append({"class_logits": class_logits / self.temperature, "mask_logits": masks})
        return stages, {"features": x}
