"""Monodepth2 pose network: a separate ResNet on a stacked frame pair + PoseDecoder.

PoseDecoder parameter names mirror the reference's `convs` entries; the reference also keeps them in
a ModuleList `net` in creation order, so the PyTorch keys are:

    squeeze/{kernel,bias} <-> net.0.{weight,bias}     pose_0 <-> net.1
    pose_1                <-> net.2                   pose_2 <-> net.3

The reference builds the decoder with num_frames_to_predict_for=2 (pose_2 has 12 outputs) but uses
only frame 0; `PoseDecoder` defaults to 2 so parameter shapes match, and `PoseNet` returns frame 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.models.layers import torch_default_conv
from jdepth.models.resnet import ResNetEncoder, encoder_channels

Dtype = Any

# The reference scales the raw conv output by 0.01 so the initial poses are near identity.
POSE_SCALE = 0.01


class PoseDecoder(nn.Module):
    """Regresses axis-angle rotation and translation from the deepest encoder features.

    Attributes:
        num_ch_enc: encoder channels; only the last one (deepest level) is used.
        num_input_features: how many encoder outputs are concatenated after the squeeze conv.
        num_frames_to_predict_for: poses predicted (the reference uses 2 and reads only index 0).
        zero_init_output: start the output conv at zero, so training starts from identity poses
            (the reference initialises it like every conv; see PoseNet).
        translation_scale: factor on the raw translation output (the reference: POSE_SCALE, like
            the rotation). Metric training sets it so that metres per frame are O(1) raw units
            (jdepth/training/metric_init.py).
        dtype: computation dtype; poses are returned in float32.
    """

    num_ch_enc: Sequence[int]
    num_input_features: int = 1
    num_frames_to_predict_for: int = 2
    zero_init_output: bool = False
    translation_scale: float = POSE_SCALE
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, deepest_features: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Predicts poses.

        Args:
            deepest_features: `num_input_features` arrays `[B, h, w, num_ch_enc[-1]]` (the last
                encoder level of each input).

        Returns:
            axisangle: `[B, F, 3]` float32, F = num_frames_to_predict_for.
            translation: `[B, F, 3]` float32.
        """
        if len(deepest_features) != self.num_input_features:
            raise ValueError(
                f"jdepth/models/pose_net.py: PoseDecoder(num_input_features="
                f"{self.num_input_features}) got {len(deepest_features)} feature arrays"
            )
        c_in = self.num_ch_enc[-1]
        # One squeeze conv is shared by all inputs, as in the reference.
        squeeze = torch_default_conv(256, 1, c_in, dtype=self.dtype, name="squeeze")
        squeezed = []
        for f in deepest_features:
            if f.ndim != 4 or f.shape[-1] != c_in:
                raise ValueError(
                    f"jdepth/models/pose_net.py: PoseDecoder expects [B, h, w, {c_in}] features, "
                    f"got shape {f.shape}"
                )
            squeezed.append(nn.relu(squeeze(f)))
        x = jnp.concatenate(squeezed, axis=-1)

        c = 256 * self.num_input_features
        x = nn.relu(torch_default_conv(256, 3, c, dtype=self.dtype, name="pose_0", padding=1)(x))
        x = nn.relu(torch_default_conv(256, 3, 256, dtype=self.dtype, name="pose_1", padding=1)(x))
        num_out = 6 * self.num_frames_to_predict_for
        x = torch_default_conv(
            num_out, 1, 256, dtype=self.dtype, name="pose_2", zero_init=self.zero_init_output
        )(x)

        pose = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        pose = pose.reshape(-1, self.num_frames_to_predict_for, 6)
        return POSE_SCALE * pose[..., :3], self.translation_scale * pose[..., 3:]


class PoseNet(nn.Module):
    """Monodepth2 "separate_resnet" pose network for one frame pair.

    Attributes:
        num_layers: ResNet depth of the pose encoder.
        bn_axis_name: pmap axis for synchronised BatchNorm (None: per-device statistics).
        zero_init_output: identity poses at initialisation. With the reference's random output
            init the first poses point in a random direction; from scratch (no ImageNet weights) the
            depth net fits its structure to that direction before the slow pose net (outputs x0.01)
            turns, and the pair can settle in a wrong minimum (see configs/demo.py).
        translation_scale: see PoseDecoder.
        dtype: computation dtype; poses are returned in float32.
    """

    num_layers: int = 18
    bn_axis_name: str | None = None
    zero_init_output: bool = False
    translation_scale: float = POSE_SCALE
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, frame_a: jax.Array, frame_b: jax.Array, train: bool
    ) -> tuple[tuple[jax.Array, jax.Array], dict[str, Any]]:
        """Predicts the pose of the pair in the reference's temporal order.

        The caller orders the pair: Monodepth2 passes `[I_f, I_0]` for f < 0 (and inverts the
        resulting matrix) and `[I_0, I_f]` for f > 0.

        Args:
            frame_a: `[B, H, W, 3]` in [0, 1], the earlier frame.
            frame_b: `[B, H, W, 3]` in [0, 1], the later frame.
            train: batch statistics in BatchNorm (apply with `mutable=["batch_stats"]`).

        Returns:
            (axisangle `[B, 3]`, translation `[B, 3]`) of frame 0 of the decoder output, float32;
            aux: {"axisangle": `[B, 2, 3]`, "translation": `[B, 2, 3]`, "encoder_features": list}.
        """
        if frame_a.shape != frame_b.shape or frame_a.ndim != 4 or frame_a.shape[-1] != 3:
            raise ValueError(
                "jdepth/models/pose_net.py: PoseNet needs two [B, H, W, 3] frames of equal shape, "
                f"got {frame_a.shape} and {frame_b.shape}"
            )
        pair = jnp.concatenate([frame_a, frame_b], axis=-1)
        features, _ = ResNetEncoder(
            self.num_layers, 2, self.bn_axis_name, self.dtype, name="encoder"
        )(pair, train)
        axisangle, translation = PoseDecoder(
            encoder_channels(self.num_layers),
            1,
            2,
            zero_init_output=self.zero_init_output,
            translation_scale=self.translation_scale,
            dtype=self.dtype,
            name="decoder",
        )([features[-1]])
        aux = {"axisangle": axisangle, "translation": translation, "encoder_features": features}
        return (axisangle[:, 0], translation[:, 0]), aux
