"""ResNet encoder with torchvision's exact structure (Monodepth2's ResnetEncoder).

The structure (kernel sizes, explicit symmetric padding, stride placement, BatchNorm settings) is
torchvision's, so ImageNet weights convert one-to-one. Submodule names follow torchvision state-dict
keys (Monodepth2 stores them under a further `encoder.` prefix):

    flax path (params / batch_stats)        torchvision key
    conv1/kernel [7, 7, 3n, 64]             conv1.weight [64, 3n, 7, 7]   (transpose 3, 2, 0, 1)
    bn1/scale, bn1/bias                     bn1.weight, bn1.bias
    bn1/mean, bn1/var (batch_stats)         bn1.running_mean, bn1.running_var
    layer{L}_{i}/conv{k}, /bn{k}            layer{L}.{i}.conv{k}, layer{L}.{i}.bn{k}
    layer{L}_{i}/downsample_conv            layer{L}.{i}.downsample.0
    layer{L}_{i}/downsample_bn              layer{L}.{i}.downsample.1

`num_batches_tracked` and the classifier `fc` have no counterpart. BatchNorm is
jdepth/models/layers.py `BatchNorm`, which updates `running_var` with the unbiased batch variance as
torch does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.models.layers import BatchNorm

Dtype = Any

# Blocks per stage (layer1..layer4) and the block type, as torchvision's resnetXX constructors.
_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
_STAGE_WIDTHS = (64, 128, 256, 512)
_BOTTLENECK_EXPANSION = 4

# Monodepth2 normalises with one scalar mean/std for all channels (not ImageNet's per-channel ones).
_INPUT_MEAN = 0.45
_INPUT_STD = 0.225

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", nonlinearity="relu").
_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_num_layers(num_layers: int) -> None:
    if num_layers not in _STAGES:
        raise ValueError(
            f"jdepth/models/resnet.py: num_layers must be one of {sorted(_STAGES)}, "
            f"got {num_layers}"
        )


def encoder_channels(num_layers: int) -> tuple[int, int, int, int, int]:
    """Channels of the 5 encoder features (Monodepth2's `num_ch_enc`).

    Args:
        num_layers: ResNet depth, one of 18, 34, 50, 101, 152.

    Returns:
        `(64, 64, 128, 256, 512)` for basic-block ResNets, levels 1-4 x4 for bottleneck ones.
    """
    _check_num_layers(num_layers)
    expansion = _BOTTLENECK_EXPANSION if _STAGES[num_layers][0] == "bottleneck" else 1
    return (64,) + tuple(w * expansion for w in _STAGE_WIDTHS)


_POOL_WINDOW, _POOL_STRIDE, _POOL_PAD = 3, 2, 1


def _max_pool_forward(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(
        x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, (1, _POOL_WINDOW, _POOL_WINDOW, 1),
        (1, _POOL_STRIDE, _POOL_STRIDE, 1),
        ((0, 0), (_POOL_PAD, _POOL_PAD), (_POOL_PAD, _POOL_PAD), (0, 0)))


# A hand-written VJP: JAX differentiates reduce_window-max through a select-and-gather over
# (value, index) pairs, which XLA:CPU runs as a tuple reduce-window plus full-size iota arrays,
# several times slower than nine tap comparisons (BENCHMARKS.md, "Speed").
@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1).

    `lax.reduce_window` pads with the reduction's identity (-inf), so a border of negative values is
    never replaced by 0, exactly as torch. The gradient goes to the first maximal element of each
    window in row-major order, as torch's (ties are otherwise ambiguous).

    Args:
        x: `[B, H, W, C]`.

    Returns:
        `[B, floor((H - 1) / 2) + 1, floor((W - 1) / 2) + 1, C]`.
    """
    return _max_pool_forward(x)


def _max_pool_fwd(x: jax.Array):
    y = _max_pool_forward(x)
    return y, (x, y)


def _max_pool_bwd(residuals, cotangent: jax.Array):
    x, y = residuals
    b, h, w, c = x.shape
    _, out_h, out_w, _ = y.shape
    s, pad = _POOL_STRIDE, _POOL_PAD
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
    ph, pw = h + 2 * pad, w + 2 * pad
    taken = jnp.zeros(y.shape, bool)
    grad = jnp.zeros((b, ph, pw, c), cotangent.dtype)
    zero = jnp.array(0, cotangent.dtype)
    for i in range(_POOL_WINDOW):
        for j in range(_POOL_WINDOW):
            tap = jax.lax.slice(padded, (0, i, j, 0),
                                (b, i + s * (out_h - 1) + 1, j + s * (out_w - 1) + 1, c),
                                (1, s, s, 1))
            hit = (tap == y) & ~taken
            taken = taken | hit
            # Interior padding puts output (oy, ox)'s share back at padded (s*oy + i, s*ox + j).
            grad = grad + jax.lax.pad(
                jnp.where(hit, cotangent, zero), zero,
                ((0, 0, 0), (i, ph - i - s * (out_h - 1) - 1, s - 1),
                 (j, pw - j - s * (out_w - 1) - 1, s - 1), (0, 0, 0)))
    return (grad[:, pad:pad + h, pad:pad + w],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, jax.named_call(_max_pool_bwd))


def _conv(features: int, kernel: int, stride: int, padding: int, dtype: Dtype, name: str):
    # Explicit symmetric padding: 'SAME' would pad (k-1)//2 before and the rest after for stride 2,
    # shifting every sample by one pixel relative to torch.
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_kaiming_fan_out,
        name=name,
    )


def _batch_norm(name: str, train: bool, axis_name: str | None, dtype: Dtype) -> BatchNorm:
    # flax momentum is the weight of the old value: torch momentum 0.1 -> 0.9. With `axis_name`
    # set, batch statistics are averaged over that pmap axis (synchronised BatchNorm).
    return BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class _Block(nn.Module):
    """Common fields of the residual blocks; `train` selects batch vs running statistics."""

    planes: int
    stride: int = 1
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32

    def _bn(self, name: str, train: bool) -> BatchNorm:
        return _batch_norm(name, train, self.bn_axis_name, self.dtype)

    def _shortcut(self, x: jax.Array, out_features: int, train: bool) -> jax.Array:
        if self.stride == 1 and x.shape[-1] == out_features:
            return x
        y = _conv(out_features, 1, self.stride, 0, self.dtype, "downsample_conv")(x)
        return self._bn("downsample_bn", train)(y)


class BasicBlock(_Block):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """`[B, H, W, C]` -> `[B, H / stride, W / stride, planes]`."""
        y = _conv(self.planes, 3, self.stride, 1, self.dtype, "conv1")(x)
        y = nn.relu(self._bn("bn1", train)(y))
        y = _conv(self.planes, 3, 1, 1, self.dtype, "conv2")(y)
        y = self._bn("bn2", train)(y)
        return nn.relu(y + self._shortcut(x, self.planes, train))


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (carrying the stride, torchvision v1.5), 1x1 expand x4 (ResNet-50+)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """`[B, H, W, C]` -> `[B, H / stride, W / stride, 4 * planes]`."""
        out_features = self.planes * _BOTTLENECK_EXPANSION
        y = _conv(self.planes, 1, 1, 0, self.dtype, "conv1")(x)
        y = nn.relu(self._bn("bn1", train)(y))
        y = _conv(self.planes, 3, self.stride, 1, self.dtype, "conv2")(y)
        y = nn.relu(self._bn("bn2", train)(y))
        y = _conv(out_features, 1, 1, 0, self.dtype, "conv3")(y)
        y = self._bn("bn3", train)(y)
        return nn.relu(y + self._shortcut(x, out_features, train))


class ResNetEncoder(nn.Module):
    """torchvision ResNet without pooling/fc, returning Monodepth2's 5 feature levels.

    Attributes:
        num_layers: 18, 34, 50 (also 101, 152).
        num_input_images: frames stacked on the channel axis; conv1 takes 3 * num_input_images.
        bn_axis_name: pmap axis over which BatchNorm averages batch statistics (None: local only).
            When set, train-mode calls must run inside pmap / shard_map binding that axis name.
        dtype: computation dtype (e.g. bfloat16); parameters are always float32.
    """

    num_layers: int = 18
    num_input_images: int = 1
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[list[jax.Array], dict[str, jax.Array]]:
        """Encodes images.

        Args:
            x: `[B, H, W, 3 * num_input_images]` images in [0, 1].
            train: use (and update, with `mutable=["batch_stats"]`) batch statistics.

        Returns:
            features: 5 arrays in `dtype` with channels `encoder_channels(num_layers)` at strides
                2, 4, 8, 16, 32 (`[B, H/2, W/2, 64]`, ..., `[B, H/32, W/32, 512 or 2048]`).
            aux: the same arrays by torchvision stage name plus `"maxpool"` (`[B, H/4, W/4, 64]`).
        """
        _check_num_layers(self.num_layers)
        expected = 3 * self.num_input_images
        if x.ndim != 4 or x.shape[-1] != expected:
            raise ValueError(
                f"jdepth/models/resnet.py: ResNetEncoder(num_input_images={self.num_input_images}) "
                f"expects [B, H, W, {expected}] input, got shape {x.shape}"
            )
        block_kind, blocks_per_stage = _STAGES[self.num_layers]
        block_cls = BasicBlock if block_kind == "basic" else Bottleneck

        x = ((x.astype(jnp.float32) - _INPUT_MEAN) / _INPUT_STD).astype(self.dtype)
        x = _conv(64, 7, 2, 3, self.dtype, "conv1")(x)
        x = _batch_norm("bn1", train, self.bn_axis_name, self.dtype)(x)
        stem = nn.relu(x)
        pooled = max_pool_3x3_s2(stem)

        aux = {"conv1": stem, "maxpool": pooled}
        features = [stem]
        x = pooled
        for stage, (planes, num_blocks) in enumerate(zip(_STAGE_WIDTHS, blocks_per_stage), 1):
            for i in range(num_blocks):
                x = block_cls(
                    planes,
                    stride=2 if (i == 0 and stage > 1) else 1,
                    bn_axis_name=self.bn_axis_name,
                    dtype=self.dtype,
                    name=f"layer{stage}_{i}",
                )(x, train)
            features.append(x)
            aux[f"layer{stage}"] = x
        return features, aux
