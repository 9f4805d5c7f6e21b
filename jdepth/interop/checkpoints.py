"""The released Monodepth2 / ManyDepth weights-folder layouts <-> jdepth params and batch_stats.

A Monodepth2 folder (`models/weights_N`, or a released `mono_640x192`) holds one file per network:

    encoder.pth       ResnetEncoder: "encoder." + torchvision ResNet keys (with `fc`), plus the
                      plain entries height, width, use_stereo       <-> depth/encoder
    depth.pth         DepthDecoder: decoder.N...                     <-> depth/decoder
    pose_encoder.pth  ResnetEncoder(num_input_images=2), conv1 [64, 6, 7, 7]  <-> pose/encoder
    pose.pth          PoseDecoder: net.N...                          <-> pose/decoder

A ManyDepth folder has the same depth.pth / pose_encoder.pth / pose.pth, a single-frame teacher in
mono_encoder.pth / mono_depth.pth (Monodepth2 layout, <-> mono/{encoder,decoder}), and a matching
encoder in encoder.pth whose ResNet is split into Sequentials:

    layer0.0 conv1, layer0.1 bn1, layer1.1.{i} layer1.{i}, layer2..4 unchanged,
    reduce_conv.0 (3x3, 64 + bins -> 64)                   <-> depth/encoder/reduce_conv
    prematching_conv.0 (1x1, 64 -> 16)                     never used by the reference's forward
                                                           pass: dropped on import, zeros on export
    backprojector.{id_coords,ones,pix_coords}              pixel grids: dropped, rebuilt on export
    height, width, min_depth_bin, max_depth_bin            extras

which is jdepth's `MatchingEncoder` (jdepth/models/manydepth.py) variable for variable. The plain
entries (extras) come back from every import as a dict and are written back on export, so a round
trip keeps them (in a ManyDepth run the depth bins live in the train state's `extra`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jdepth.interop import torch_layout as tl
from jdepth.interop.files import is_extra

MONODEPTH2_FILES = ("encoder", "depth", "pose_encoder", "pose")
MANYDEPTH_FILES = MONODEPTH2_FILES + ("mono_encoder", "mono_depth")

# torchvision's ResNet constructors: blocks per stage and block kind -> depth.
_RESNET_DEPTHS = {
    ((2, 2, 2, 2), "basic"): 18,
    ((3, 4, 6, 3), "basic"): 34,
    ((3, 4, 6, 3), "bottleneck"): 50,
    ((3, 4, 23, 3), "bottleneck"): 101,
    ((3, 8, 36, 3), "bottleneck"): 152,
}
_MATCHING_RENAMES = (("layer0.0.", "conv1."), ("layer0.1.", "bn1."), ("layer1.1.", "layer1."))
_UNUSED_PREMATCHING = "prematching_conv"


def resnet_depth(encoder_params: Mapping) -> int:
    """ResNet depth (18, 34, 50, ...) of jdepth encoder params, from their block structure."""
    blocks = tuple(
        sum(1 for name in encoder_params if name.startswith(f"layer{stage}_"))
        for stage in range(1, 5)
    )
    kind = "bottleneck" if "conv3" in encoder_params.get("layer1_0", {}) else "basic"
    if (blocks, kind) not in _RESNET_DEPTHS:
        raise ValueError(f"checkpoints: no torchvision ResNet has {kind} blocks {blocks}")
    return _RESNET_DEPTHS[(blocks, kind)]


def _stage_channels(encoder_params: Mapping, stage: int) -> int:
    """Output channels of ResNet stage `stage` (its last block's last conv)."""
    prefix = f"layer{stage}_"
    last = max((n for n in encoder_params if n.startswith(prefix)), key=lambda n: int(n[7:]))
    block = encoder_params[last]
    return int(np.shape(block["conv3" if "conv3" in block else "conv2"]["kernel"])[-1])


def extras_of(state: Mapping[str, Any]) -> dict[str, Any]:
    """The plain (non-tensor) entries of a state dict, e.g. height and width."""
    return {k: v for k, v in state.items() if is_extra(k)}


def _tensors(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not is_extra(k)}


# --- One ResnetEncoder file (Monodepth2's encoder.pth / pose_encoder.pth / mono_encoder.pth). ----


def resnet_encoder_to_torch(
    params: Mapping, batch_stats: Mapping, *, with_classifier: bool = True
) -> tl.StateDict:
    """Encoder variables as a Monodepth2 ResnetEncoder state dict (`encoder.` + torchvision)."""
    state = tl.encoder_to_torch(params, batch_stats)
    if with_classifier:
        state.update(tl.classifier_zeros(_stage_channels(params, 4)))
    return tl.with_prefix(state, "encoder.")


def resnet_encoder_from_torch(state: Mapping[str, Any]) -> tuple[dict, dict]:
    """A Monodepth2 ResnetEncoder state dict (extras ignored) as encoder variables."""
    tensors = _tensors(state)
    stray = sorted(k for k in tensors if not k.startswith("encoder."))
    if stray:
        raise ValueError(f"checkpoints: not a Monodepth2 ResnetEncoder file: {stray[:3]}")
    return tl.encoder_from_torch(tl.strip_prefix(tensors, "encoder."))


# --- ManyDepth's matching encoder. ----------------------------------------------------------------


def _pixel_grids(height: int, width: int, num_bins: int) -> dict[str, np.ndarray]:
    """ManyDepth's BackprojectDepth buffers at 1/4 resolution (saved as parameters)."""
    h, w = height // 4, width // 4
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    id_coords = np.stack([xs, ys])
    ones = np.ones((num_bins, 1, h * w), np.float32)
    pix = np.concatenate([np.stack([xs.ravel(), ys.ravel()])[None].repeat(num_bins, 0), ones], 1)
    return {"backprojector.id_coords": id_coords, "backprojector.ones": ones,
            "backprojector.pix_coords": pix}


def matching_encoder_to_torch(
    params: Mapping, batch_stats: Mapping, extras: Mapping[str, Any]
) -> tl.StateDict:
    """jdepth matching-encoder variables + extras -> ManyDepth's encoder.pth state dict.

    `extras` must hold height and width (they size the rebuilt pixel grids); all its entries are
    written back unchanged.
    """
    resnet = {k: v for k, v in params.items() if k != "reduce_conv"}
    state = tl.encoder_to_torch(resnet, batch_stats)
    for old, new in _MATCHING_RENAMES:
        state = {(old + k[len(new):] if k.startswith(new) else k): v for k, v in state.items()}
    state.update(tl.conv_to_torch(params["reduce_conv"], "reduce_conv.0"))
    # Zeros for the reference's never-used prematching conv, so strict loading works.
    matching_channels = _stage_channels(resnet, 1)
    unused = {"kernel": np.zeros((1, 1, matching_channels, 16), np.float32),
              "bias": np.zeros((16,), np.float32)}
    state.update(tl.conv_to_torch(unused, f"{_UNUSED_PREMATCHING}.0"))
    num_bins = np.shape(params["reduce_conv"]["kernel"])[2] - matching_channels
    state.update(_pixel_grids(int(extras["height"]), int(extras["width"]), num_bins))
    return {**state, **extras}


def matching_encoder_from_torch(state: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """ManyDepth's encoder.pth -> (params, batch_stats, extras); the pixel grids and the unused
    prematching conv are dropped."""
    dropped = ("backprojector.", f"{_UNUSED_PREMATCHING}.", "reduce_conv.")
    resnet = {k: v for k, v in _tensors(state).items() if not k.startswith(dropped)}
    for old, new in _MATCHING_RENAMES:
        resnet = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in resnet.items()}
    params, batch_stats = tl.encoder_from_torch(resnet)
    params["reduce_conv"] = tl.conv_from_torch(state, "reduce_conv.0")
    return params, batch_stats, extras_of(state)


def is_matching_encoder(state: Mapping[str, Any]) -> bool:
    return "layer0.0.weight" in state


# --- Whole folders. -------------------------------------------------------------------------------


def to_torch(
    params: Mapping,
    batch_stats: Mapping,
    extras: Mapping[str, Any],
    *,
    with_classifier: bool = True,
) -> dict[str, tl.StateDict]:
    """jdepth variables -> {file stem: state dict} in the reference layout.

    Args:
        params, batch_stats: dicts keyed by network ("depth", "pose", optionally ManyDepth's
            teacher "mono").
            A depth encoder with `reduce_conv` is written as ManyDepth's matching encoder.
        extras: the encoder.pth plain entries (Monodepth2: height, width, use_stereo; ManyDepth:
            height, width, min_depth_bin, max_depth_bin).
        with_classifier: add zero `fc` entries so strict `load_state_dict` into the reference's
            torchvision-based encoders works.

    Returns:
        {"encoder", "depth", "pose_encoder", "pose"[, "mono_encoder", "mono_depth"]: state dict}.
    """
    files = {}
    depth_enc, depth_enc_stats = params["depth"]["encoder"], batch_stats["depth"]["encoder"]
    if "reduce_conv" in depth_enc:
        files["encoder"] = matching_encoder_to_torch(depth_enc, depth_enc_stats, extras)
    else:
        encoder = resnet_encoder_to_torch(depth_enc, depth_enc_stats,
                                          with_classifier=with_classifier)
        files["encoder"] = {**encoder, **extras}
    files["depth"] = tl.depth_decoder_to_torch(params["depth"]["decoder"])
    if "pose" in params:
        files["pose_encoder"] = resnet_encoder_to_torch(
            params["pose"]["encoder"], batch_stats["pose"]["encoder"],
            with_classifier=with_classifier,
        )
        files["pose"] = tl.pose_decoder_to_torch(params["pose"]["decoder"])
    if "mono" in params:
        files["mono_encoder"] = resnet_encoder_to_torch(
            params["mono"]["encoder"], batch_stats["mono"]["encoder"],
            with_classifier=with_classifier,
        )
        files["mono_depth"] = tl.depth_decoder_to_torch(params["mono"]["decoder"])
    return files


def from_torch(files: Mapping[str, Mapping[str, Any]]) -> tuple[dict, dict, dict]:
    """{file stem: state dict} in the reference layout -> (params, batch_stats, extras).

    Needs at least encoder and depth; pose_encoder/pose and mono_encoder/mono_depth are converted
    when present. Which encoder layout encoder.pth has is read from its keys.
    """
    missing = [n for n in ("encoder", "depth") if n not in files]
    if missing:
        raise ValueError(f"checkpoints: the weights folder lacks {', '.join(missing)}.pth")
    if is_matching_encoder(files["encoder"]):
        enc_params, enc_stats, extras = matching_encoder_from_torch(files["encoder"])
    else:
        enc_params, enc_stats = resnet_encoder_from_torch(files["encoder"])
        extras = extras_of(files["encoder"])
    params = {"depth": {"encoder": enc_params,
                        "decoder": tl.depth_decoder_from_torch(files["depth"])}}
    batch_stats = {"depth": {"encoder": enc_stats}}
    pairs = {"pose": ("pose_encoder", "pose"), "mono": ("mono_encoder", "mono_depth")}
    for network, (encoder_file, decoder_file) in pairs.items():
        if encoder_file not in files or decoder_file not in files:
            continue
        enc_params, enc_stats = resnet_encoder_from_torch(files[encoder_file])
        decode = tl.pose_decoder_from_torch if network == "pose" else tl.depth_decoder_from_torch
        params[network] = {"encoder": enc_params, "decoder": decode(files[decoder_file])}
        batch_stats[network] = {"encoder": enc_stats}
    return params, batch_stats, extras
