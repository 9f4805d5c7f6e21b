"""Small layers shared by the networks: the Monodepth2 decoders' convolutional blocks, BatchNorm.

The decoders follow Monodepth2's layers.py: a 3x3 convolution after a 1-pixel *reflection* pad
(`Conv3x3`), the same followed by ELU (`ConvBlock`), and nearest-neighbour x2 upsampling.

Parameter layout mirrors the PyTorch modules so a state-dict mapping is mechanical:

    ConvBlock  (torch: ConvBlock.conv = Conv3x3, Conv3x3.conv = nn.Conv2d)
      params['conv']['conv']['kernel'] [3, 3, in, out]  <->  conv.conv.weight [out, in, 3, 3]
      params['conv']['conv']['bias']   [out]            <->  conv.conv.bias
    Conv3x3
      params['conv']['kernel'] / ['bias']                <->  conv.weight / conv.bias

Convolutions without pretrained weights are initialised like `torch.nn.Conv2d` (kaiming-uniform
with a=sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias), because the reference
trains its decoders from that initialisation and the x0.01 pose scaling was tuned with it.

`BatchNorm` is flax's with torch's running-variance update (see its docstring); every BatchNorm in
jdepth/models is one (through jdepth/models/resnet.py `_batch_norm`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import normalization as flax_normalization

Dtype = Any

# Variance scaling with scale 1/3 over fan_in, uniform, gives the limit sqrt(1/fan_in) that
# torch.nn.Conv2d.reset_parameters uses for its kernel.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """torch.nn.Conv2d's bias initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Args:
        fan_in: in_channels * kernel_height * kernel_width of the convolution.

    Returns:
        A flax initialiser `(key, shape, dtype) -> array`.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_default_conv(
    features: int,
    kernel_size: int,
    in_features: int,
    *,
    dtype: Dtype,
    name: str,
    padding: int = 0,
    zero_init: bool = False,
) -> nn.Conv:
    """An `nn.Conv` with bias, explicit symmetric zero padding and torch.nn.Conv2d's init.

    Args:
        features: output channels.
        kernel_size: square kernel size.
        in_features: input channels (needed up front for the bias initialiser's fan-in).
        dtype: computation dtype; parameters stay float32.
        name: submodule name (mirrors the reference's attribute name).
        padding: zero padding on every side, as torch's `padding=` argument.
        zero_init: kernel and bias start at zero instead (an output layer that starts silent).

    Returns:
        The convolution module (unbound).
    """
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        padding=((padding, padding), (padding, padding)),
        use_bias=True,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.zeros if zero_init else torch_default_kernel_init,
        bias_init=(
            nn.initializers.zeros
            if zero_init
            else torch_default_bias_init(in_features * kernel_size * kernel_size)
        ),
        name=name,
    )


def reflection_pad(x: jax.Array, pad: int = 1) -> jax.Array:
    """Pads H and W by mirroring without repeating the edge (torch.nn.ReflectionPad2d).

    Args:
        x: `[B, H, W, C]`.
        pad: pixels added on each side of H and W; must be smaller than H and W.

    Returns:
        `[B, H + 2 * pad, W + 2 * pad, C]`.
    """
    if x.ndim != 4:
        raise ValueError(
            f"jdepth/models/layers.py: reflection_pad expects [B, H, W, C], got {x.shape}"
        )
    if pad >= x.shape[1] or pad >= x.shape[2]:
        raise ValueError(
            f"jdepth/models/layers.py: reflection pad {pad} needs H and W > {pad}, got {x.shape}"
        )
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 upsampling (F.interpolate(scale_factor=2, mode="nearest")).

    Args:
        x: `[B, H, W, C]`.

    Returns:
        `[B, 2H, 2W, C]` where output pixel (i, j) copies input pixel (i // 2, j // 2).
    """
    b, h, w, c = x.shape
    # Broadcast + reshape lowers to a single cheap broadcast, unlike two jnp.repeat gathers.
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


class Conv3x3(nn.Module):
    """1-pixel reflection pad + 3x3 convolution with bias (Monodepth2's Conv3x3)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """`[B, H, W, C_in]` -> `[B, H, W, features]` in `dtype`."""
        conv = torch_default_conv(self.features, 3, x.shape[-1], dtype=self.dtype, name="conv")
        return conv(reflection_pad(x, 1))


class ConvBlock(nn.Module):
    """Conv3x3 followed by ELU (Monodepth2's ConvBlock)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """`[B, H, W, C_in]` -> `[B, H, W, features]` in `dtype`."""
        return nn.elu(Conv3x3(self.features, dtype=self.dtype, name="conv")(x))


class BatchNorm(nn.BatchNorm):
    """flax's BatchNorm, but the running variance is updated with the unbiased batch variance.

    torch (nn.BatchNorm2d, SyncBatchNorm) normalises a training batch with the biased variance but
    folds `var * n / (n - 1)` into `running_var`, n being the values per channel over the whole
    (synchronised) batch; flax folds in the biased one, so eval-mode statistics drift from those of
    a model trained, imported or exported through torch (most at the deep, small feature maps).
    Fields, variable names ("mean", "var", "scale", "bias") and the forward pass are flax's, so
    checkpoints and jdepth/interop are unaffected. The mask argument is not supported.
    """

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalises `x` over every axis but `self.axis`; see flax.linen.BatchNorm."""
        # flax's private helpers, so batch statistics and normalisation stay bit-identical to
        # nn.BatchNorm (pinned flax<0.13 in pyproject.toml).
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        feature_axes = flax_normalization._canonicalize_axes(x.ndim, self.axis)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        feature_shape = [x.shape[ax] for ax in feature_axes]
        stats_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, stats_dtype),
                                feature_shape)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stats_dtype),
                               feature_shape)
        if use_running_average:
            mean = jnp.asarray(ra_mean.value, stats_dtype)
            var = jnp.asarray(ra_var.value, stats_dtype)
        else:
            # The reduction axis need not exist at init, as in flax.
            axis_name = None if self.is_initializing() else self.axis_name
            mean, var = flax_normalization._compute_stats(
                x, reduction_axes, dtype=self.dtype, axis_name=axis_name,
                axis_index_groups=self.axis_index_groups,
                use_fast_variance=self.use_fast_variance,
                force_float32_reductions=self.force_float32_reductions)
            if not self.is_initializing():
                n = math.prod(x.shape[ax] for ax in reduction_axes) * _devices(
                    axis_name, self.axis_index_groups)
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        return flax_normalization._normalize(
            self, x, mean, var, reduction_axes, feature_axes, self.dtype, self.param_dtype,
            self.epsilon, self.use_bias, self.use_scale, self.bias_init, self.scale_init,
            self.force_float32_reductions)


def _devices(axis_name: str | None, axis_index_groups) -> int:
    """Devices whose batches one synchronised BatchNorm pools (1 without `axis_name`)."""
    if axis_name is None:
        return 1
    if axis_index_groups is not None:
        return len(axis_index_groups[0])
    return jax.lax.axis_size(axis_name)
