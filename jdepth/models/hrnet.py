"""HRNet-18 (W18) encoder with the feature layout DIFFNet's decoder reads.

Structure (official HRNet, as DIFFNet's networks/test_hr_encoder.py builds it; REFERENCE_FACTS 3.1):

    stem     conv 3x3/2 (3 -> 64) + BN + ReLU            -> stem1  [B, H/2, W/2, 64]
             conv 3x3/2 (64 -> 64) + BN + ReLU           -> stem2  [B, H/4, W/4, 64]
    layer1   4 Bottlenecks (64 planes)                   -> [B, H/4, W/4, 256]
    stage 2  1 module,  branches 18, 36        (1/4, 1/8)
    stage 3  4 modules, branches 18, 36, 72    (+ 1/16)
    stage 4  3 modules, branches 18, 36, 72, 144 (+ 1/32)

Every module runs 4 BasicBlocks per branch, then fuses: output branch i sums all branches j, where
j > i goes through 1x1 conv + BN and is upsampled by 2^(j-i), and j < i goes through i - j chained
3x3 stride-2 conv + BN (ReLU on all but the last), followed by ReLU. Transitions into a stage are
3x3 conv + BN + ReLU (a new branch comes from the previous lowest-resolution one with stride 2).

DIFFNet reads five groups (its `num_ch_enc` [64, 18, 36, 72, 144]); here every group is a list:

    groups[0] = [stem1]                                  64 ch, 1/2
    groups[1] = [stem2, s2_b0, s3_b0, s4_b0]             64 + 3 x 18 ch, 1/4
    groups[2] = [s2_b1, s3_b1, s4_b1]                    3 x 36 ch, 1/8
    groups[3] = [s3_b2, s4_b2]                           2 x 72 ch, 1/16
    groups[4] = [s4_b3]                                  144 ch, 1/32

(sK_bN: branch N of the last module of stage K). The pyramid other modules want (panoptic head,
scale head) is `[stem1, s4_b0, s4_b1, s4_b2, s4_b3]` at strides 2..32 (`aux["pyramid"]`).

`HRNetEncoder` is assembled from `stem_and_layer1`, `high_resolution_stages` and `diffnet_groups`,
functions that create their modules inside the calling module (same parameter paths as one
monolithic module), so the multi-frame encoder (jdepth/models/manydepth_hrnet.py) can split HRNet
after layer1 for its cost volume without a second copy of the architecture.

Parameter names follow the PyTorch state-dict keys (timm `hrnet_w18` and DIFFNet use the same):

    flax path                                 torch key
    conv1, bn1, conv2, bn2                    conv1, bn1, conv2, bn2
    layer1_{i}/{conv,bn}{k}, downsample_*     layer1.{i}.{conv,bn}{k}, downsample.{0,1}
    transition{t}_{i}_conv / _bn              transition{t}.{i}.{0,1}        (existing branch)
                                              transition{t}.{i}.0.{0,1}      (new branch)
    stage{s}_{m}/branch{b}_{k}/...            stage{s}.{m}.branches.{b}.{k}...
    stage{s}_{m}/fuse_{i}_{j}_{k} / _bn       stage{s}.{m}.fuse_layers.{i}.{j}.{0,1}     (j > i)
                                              stage{s}.{m}.fuse_layers.{i}.{j}.{k}.{0,1} (j < i)

Compile time: the ~300 convolutions (each with a BatchNorm) are unrolled, and the Student-I
train step takes about 3.5 minutes to compile on a 2-core CPU (once per run; it did not finish
in 15 minutes until the optimizer update's finite-gradient predicate went through a `lax.cond`
that XLA cannot fuse into the ~1000 per-leaf selects, jdepth/training/state.py).
`nn.scan` over the identical blocks and modules cut the encoder's compile about 6x but made the
CPU step about 3x slower (XLA:CPU runs convolutions inside loops far slower, as inside
`lax.cond`: jax-ml/jax#12868), so the layers stay unrolled.

Input normalisation: like the ResNet encoder, `(x - 0.45) / 0.225` by default. DIFFNet feeds raw
[0, 1] RGB (`normalize_input=False`); with BatchNorm right after the first conv the difference is
only in the conv's effective bias, and the shared default keeps converted ResNet-style pipelines
uniform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jdepth.models.layers import BatchNorm
from jdepth.models.resnet import _INPUT_MEAN, _INPUT_STD, BasicBlock, Bottleneck, _batch_norm, _conv

Dtype = Any

# HRNet-W18: (modules, branch widths) of stages 2-4; 4 BasicBlocks per branch everywhere.
STAGES = ((1, (18, 36)), (4, (18, 36, 72)), (3, (18, 36, 72, 144)))
BLOCKS_PER_BRANCH = 4
STEM_WIDTH = 64
LAYER1_BLOCKS = 4
# Channels of the five DIFFNet groups (DIFFNet's num_ch_enc) and of the stride-2..32 pyramid.
NUM_CH_ENC = (64, 18, 36, 72, 144)
PYRAMID_CHANNELS = NUM_CH_ENC


def upsample_bilinear_aligned(x: jax.Array, factor: int) -> jax.Array:
    """Bilinear x`factor` upsampling with align_corners=True (F.interpolate's, as DIFFNet's fuse).

    Output pixel o samples the input at o * (n - 1) / (n * factor - 1): the corner pixels of input
    and output coincide. Written as two small interpolation matrices (static shapes), which XLA
    turns into two dots, exact and cheaper than a gather.

    Args:
        x: `[B, h, w, C]`.
        factor: integer scale factor >= 1.

    Returns:
        `[B, factor * h, factor * w, C]` in x's dtype.
    """
    if factor == 1:
        return x
    _, h, w, _ = x.shape
    rows = jnp.asarray(_interpolation_matrix(h, factor * h), x.dtype)
    cols = jnp.asarray(_interpolation_matrix(w, factor * w), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", rows, x)
    return jnp.einsum("pw,bowc->bopc", cols, x)


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` linear-interpolation weights of the align_corners=True rule."""
    if n_in == 1:
        return np.ones((n_out, 1), np.float32)
    src = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(src).astype(int), n_in - 2)
    frac = src - lo
    m = np.zeros((n_out, n_in), np.float64)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m.astype(np.float32)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """Nearest x`factor` upsampling (official HRNet, timm): `[B, h, w, C]` -> `[B, fh, fw, C]`."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, factor * h, factor * w, c)


_UPSAMPLERS = {"bilinear": upsample_bilinear_aligned, "nearest": upsample_nearest}


class HighResolutionModule(nn.Module):
    """One HRNet module: BasicBlocks per branch, then the all-to-all multi-resolution fusion.

    Attributes:
        widths: channels of each branch, highest resolution first (branch b at 1/2^b of branch 0).
        fuse_upsample: "bilinear" (align_corners=True, DIFFNet) or "nearest" (timm / official).
        bn_axis_name: pmap axis for synchronised BatchNorm.
        dtype: computation dtype.
    """

    widths: Sequence[int]
    fuse_upsample: str = "bilinear"
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32

    def _bn(self, name: str, train: bool) -> BatchNorm:
        return _batch_norm(name, train, self.bn_axis_name, self.dtype)

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array], train: bool) -> list[jax.Array]:
        """`[B, h / 2^b, w / 2^b, widths[b]]` per branch b -> the fused branches, same shapes."""
        ys = []
        for b, (x, width) in enumerate(zip(xs, self.widths)):
            for k in range(BLOCKS_PER_BRANCH):
                x = BasicBlock(width, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                               name=f"branch{b}_{k}")(x, train)
            ys.append(x)
        if len(ys) == 1:
            return ys
        upsample = _UPSAMPLERS[self.fuse_upsample]
        fused = []
        for i, width in enumerate(self.widths):
            total = ys[i]
            for j, y in enumerate(ys):
                if j > i:  # lower resolution: 1x1 to this branch's width, then up
                    y = _conv(width, 1, 1, 0, self.dtype, f"fuse_{i}_{j}_0")(y)
                    y = upsample(self._bn(f"fuse_{i}_{j}_0_bn", train)(y), 2 ** (j - i))
                elif j < i:  # higher resolution: i - j stride-2 3x3 convs
                    for k in range(i - j):
                        last = k == i - j - 1
                        y = _conv(width if last else self.widths[j], 3, 2, 1, self.dtype,
                                  f"fuse_{i}_{j}_{k}")(y)
                        y = self._bn(f"fuse_{i}_{j}_{k}_bn", train)(y)
                        if not last:
                            y = nn.relu(y)
                else:
                    continue
                total = total + y
            fused.append(nn.relu(total))
        return fused


def stem_and_layer1(
    normalize_input: bool, train: bool, bn_axis_name: str | None, dtype: Dtype
) -> Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
    """Builds the stem and layer1 in the calling compact module; returns their forward function.

    The modules are created once (names conv1, bn1, conv2, bn2, layer1_{i} directly under the
    caller, the torch layout), so the returned function can run several batches through the same
    weights: the multi-frame encoder (jdepth/models/manydepth_hrnet.py) calls it on the current
    and on the lookup frames. In train mode every call uses, and updates, batch statistics.

    Returns:
        fn(x `[B, H, W, 3]` in [0, 1]) -> (stem1 `[B, H/2, W/2, 64]`, stem2 `[B, H/4, W/4, 64]`,
        layer1 `[B, H/4, W/4, 256]`), in `dtype`.
    """
    conv1 = _conv(STEM_WIDTH, 3, 2, 1, dtype, "conv1")
    bn1 = _batch_norm("bn1", train, bn_axis_name, dtype)
    conv2 = _conv(STEM_WIDTH, 3, 2, 1, dtype, "conv2")
    bn2 = _batch_norm("bn2", train, bn_axis_name, dtype)
    blocks = [
        Bottleneck(STEM_WIDTH, bn_axis_name=bn_axis_name, dtype=dtype, name=f"layer1_{i}")
        for i in range(LAYER1_BLOCKS)
    ]

    def forward(x):
        x = x.astype(jnp.float32)
        if normalize_input:
            x = (x - _INPUT_MEAN) / _INPUT_STD
        x = x.astype(dtype)
        stem1 = nn.relu(bn1(conv1(x)))
        stem2 = nn.relu(bn2(conv2(stem1)))
        y = stem2
        for block in blocks:
            y = block(y, train)
        return stem1, stem2, y

    return forward


def high_resolution_stages(
    x: jax.Array, train: bool, fuse_upsample: str, bn_axis_name: str | None, dtype: Dtype
) -> list[list[jax.Array]]:
    """Transitions and stages 2-4 on a layer1-shaped map, built in the calling compact module.

    Args:
        x: `[B, h, w, 256]` (layer1's output, or the multi-frame encoder's fused map).

    Returns:
        [s2, s3, s4]: the branches of the last module of each stage, branch b
        `[B, h / 2^b, w / 2^b, STAGES[.][1][b]]`.
    """
    branches, previous_widths = [x], (x.shape[-1],)
    per_stage = []
    for stage, (num_modules, widths) in enumerate(STAGES, start=2):
        branches = _transition(branches, previous_widths, widths, stage - 1, train, bn_axis_name,
                               dtype)
        for m in range(num_modules):
            branches = HighResolutionModule(
                widths, fuse_upsample, bn_axis_name, dtype, name=f"stage{stage}_{m}",
            )(branches, train)
        per_stage.append(branches)
        previous_widths = widths
    return per_stage


def diffnet_groups(
    stem1: jax.Array, stem2: jax.Array, per_stage: Sequence[Sequence[jax.Array]]
) -> list[list[jax.Array]]:
    """DIFFNet's five feature groups (module docstring) from the stems and the stage outputs."""
    s2, s3, s4 = per_stage
    return [
        [stem1],
        [stem2, s2[0], s3[0], s4[0]],
        [s2[1], s3[1], s4[1]],
        [s3[2], s4[2]],
        [s4[3]],
    ]


def check_image(x: jax.Array, where: str) -> None:
    """HRNet's input contract: `[B, H, W, 3]` with H and W multiples of 32."""
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] % 32 or x.shape[2] % 32:
        raise ValueError(
            f"{where} needs [B, H, W, 3] images with H and W multiples of 32, got shape {x.shape}"
        )


def check_fuse_upsample(fuse_upsample: str) -> None:
    if fuse_upsample not in _UPSAMPLERS:
        raise ValueError(
            f"jdepth/models/hrnet.py: fuse_upsample must be one of {sorted(_UPSAMPLERS)}, "
            f"got {fuse_upsample!r}"
        )


def _conv_bn(x, features, stride, name, train, bn_axis_name, dtype):
    x = _conv(features, 3, stride, 1, dtype, f"{name}_conv")(x)
    return nn.relu(_batch_norm(f"{name}_bn", train, bn_axis_name, dtype)(x))


def _transition(branches, previous_widths, widths, t, train, bn_axis_name, dtype):
    """Into the next stage: adapt existing branches' widths, add one stride-2 branch."""
    out = []
    for i, width in enumerate(widths):
        if i < len(previous_widths):
            x = branches[i]
            if previous_widths[i] != width:  # only layer1's 256 -> 18
                x = _conv_bn(x, width, 1, f"transition{t}_{i}", train, bn_axis_name, dtype)
        else:  # HRNet-W18 adds exactly one branch per stage, from the lowest resolution
            x = _conv_bn(branches[-1], width, 2, f"transition{t}_{i}", train, bn_axis_name, dtype)
        out.append(x)
    return out


class HRNetEncoder(nn.Module):
    """HRNet-W18 returning DIFFNet's five feature groups (module docstring).

    Attributes:
        normalize_input: apply `(x - 0.45) / 0.225` first, as the ResNet encoder (DIFFNet: False).
        fuse_upsample: upsampling of the fusion's upward paths, "bilinear" (DIFFNet) or "nearest".
        bn_axis_name: pmap axis for synchronised BatchNorm (None: per-device statistics).
        dtype: computation dtype; parameters are float32.
    """

    normalize_input: bool = True
    fuse_upsample: str = "bilinear"
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool
    ) -> tuple[list[list[jax.Array]], dict[str, Any]]:
        """Encodes images.

        Args:
            x: `[B, H, W, 3]` in [0, 1], H and W multiples of 32.
            train: use (and update, with `mutable=["batch_stats"]`) batch statistics.

        Returns:
            groups: the five DIFFNet groups (module docstring), lists of arrays in `dtype`.
            aux: {"pyramid": [stem1, s4_b0, s4_b1, s4_b2, s4_b3] at strides 2..32 with channels
                  PYRAMID_CHANNELS, "stem2": [B, H/4, W/4, 64]}.
        """
        check_image(x, "jdepth/models/hrnet.py: HRNetEncoder")
        check_fuse_upsample(self.fuse_upsample)
        stem1, stem2, y = stem_and_layer1(
            self.normalize_input, train, self.bn_axis_name, self.dtype
        )(x)
        per_stage = high_resolution_stages(
            y, train, self.fuse_upsample, self.bn_axis_name, self.dtype
        )
        groups = diffnet_groups(stem1, stem2, per_stage)
        return groups, {"pyramid": [stem1, *per_stage[-1]], "stem2": stem2}
