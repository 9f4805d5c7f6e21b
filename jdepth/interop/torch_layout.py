"""jdepth variables <-> PyTorch state dicts, one network part at a time (numpy only, no torch).

A state dict here is a plain `dict[str, np.ndarray]` with PyTorch's key names and layouts, so the
conversions run and are tested without torch; `jdepth/interop/files.py` reads and writes them as
.pth (torch) or .npz. Layout rules, applied to every part:

    conv kernel  flax [kh, kw, in, out] (HWIO)   <->  torch weight [out, in, kh, kw] (OIHW)
    conv bias    [out]                           <->  bias [out]
    BatchNorm    params scale, bias              <->  weight, bias
                 batch_stats mean, var           <->  running_mean, running_var
                 (no counterpart)                 ->  num_batches_tracked (int64 0 on export,
                                                      ignored on import: unused with momentum 0.1)

Parts and their key names (no prefix; the reference checkpoints add one, see checkpoints.py):

    ResNet encoder   torchvision: conv1, bn1, layer{L}.{i}.{conv,bn}{k}, .downsample.{0,1}
                     (flax: conv1, bn1, layer{L}_{i}/..., downsample_conv, downsample_bn);
                     torchvision's classifier `fc` is dropped on import (see `classifier_zeros`).
    depth decoder    decoder.N.conv.conv.{weight,bias} (upconv), decoder.N.conv.{weight,bias}
                     (dispconv), N from `depth_decoder.decoder_torch_index`.
    pose decoder     net.0 squeeze, net.1 pose_0, net.2 pose_1, net.3 pose_2.

Every import is strict: a key that maps to nothing, or a missing one, raises with its name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from jdepth.models.depth_decoder import NUM_CH_DEC, decoder_torch_index

StateDict = dict[str, np.ndarray]
Tree = dict

_BN_PARAM_TO_TORCH = {"scale": "weight", "bias": "bias"}
_BN_STAT_TO_TORCH = {"mean": "running_mean", "var": "running_var"}
_BN_FROM_TORCH = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_CLASSES = 1000  # torchvision's ImageNet classifier
_POSE_NET_INDEX = {"squeeze": 0, "pose_0": 1, "pose_1": 2, "pose_2": 3}


def kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    """`[kh, kw, in, out]` -> `[out, in, kh, kw]` (a transposed copy, C-contiguous)."""
    return np.ascontiguousarray(np.asarray(kernel).transpose(3, 2, 0, 1))


def kernel_from_torch(weight: np.ndarray) -> np.ndarray:
    """`[out, in, kh, kw]` -> `[kh, kw, in, out]` (a transposed copy, C-contiguous)."""
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise ValueError(f"torch_layout: conv weight must be [out, in, kh, kw], got {weight.shape}")
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def _flat(tree: Mapping) -> dict[tuple[str, ...], np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _unflat(flat: Mapping[tuple[str, ...], np.ndarray]) -> Tree:
    return traverse_util.unflatten_dict(dict(flat))


# --- ResNet encoder. ------------------------------------------------------------------------------

_LAYER_FLAX = re.compile(r"^layer([1-4])_(\d+)$")
_LAYER_TORCH = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_SUBMODULE_TO_TORCH = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_SUBMODULE_FROM_TORCH = {v: k for k, v in _SUBMODULE_TO_TORCH.items()}
_BLOCK_MODULE = re.compile(r"^(conv[1-3]|bn[1-3]|downsample_conv|downsample_bn)$")


def _is_bn(module: str) -> bool:
    return module.startswith("bn") or module == "downsample_bn"


def _encoder_module_to_torch(path: tuple[str, ...]) -> str:
    """('layer2_0', 'downsample_bn') -> 'layer2.0.downsample.1'; ('conv1',) -> 'conv1'."""
    if len(path) == 1 and path[0] in ("conv1", "bn1"):
        return path[0]
    if len(path) == 2 and _LAYER_FLAX.match(path[0]) and _BLOCK_MODULE.match(path[1]):
        stage, index = _LAYER_FLAX.match(path[0]).groups()
        return f"layer{stage}.{index}.{_SUBMODULE_TO_TORCH.get(path[1], path[1])}"
    raise ValueError(f"torch_layout: {'/'.join(path)} is not a ResNet encoder module")


def _encoder_module_from_torch(module: str) -> tuple[str, ...]:
    """Inverse of `_encoder_module_to_torch`."""
    if module in ("conv1", "bn1"):
        return (module,)
    match = _LAYER_TORCH.match(module)
    if match:
        stage, index, sub = match.groups()
        sub = _SUBMODULE_FROM_TORCH.get(sub, sub)
        if _BLOCK_MODULE.match(sub):
            return (f"layer{stage}_{index}", sub)
    raise ValueError(f"torch_layout: {module!r} is not a torchvision ResNet module")


_MODULE_RANK = {"conv1": 0, "bn1": 1, "conv2": 2, "bn2": 3, "conv3": 4, "bn3": 5, "downsample": 6}
_LEAF_RANK = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _torch_order(key: str) -> tuple:
    """Sort key reproducing torch's registration order (conv1, bn1, layer1.0.conv1, ...), so
    exported files list their entries as torch's own `state_dict()` does."""
    *module, leaf = key.split(".")
    ranks = []
    for part in module:
        if part.isdigit():
            ranks.append((0, int(part)))
        elif part in _MODULE_RANK:
            ranks.append((1, _MODULE_RANK[part]))
        else:  # layer1 < layer2 < ... < other names
            ranks.append((2, part))
    return tuple(ranks), _LEAF_RANK.index(leaf) if leaf in _LEAF_RANK else len(_LEAF_RANK)


def encoder_to_torch(
    params: Mapping, batch_stats: Mapping, *, num_batches_tracked: bool = True
) -> StateDict:
    """A jdepth `ResNetEncoder`'s variables as a torchvision ResNet state dict (without `fc`).

    Args:
        params: the encoder's params subtree (`params["depth"]["encoder"]`).
        batch_stats: the matching batch_stats subtree.
        num_batches_tracked: add each BatchNorm's int64 counter (0), as torch's own files have.

    Returns:
        {torchvision key: array}, kernels in OIHW, in torch's registration order.
    """
    state: StateDict = {}
    for path, value in _flat(params).items():
        module, leaf = _encoder_module_to_torch(path[:-1]), path[-1]
        if leaf == "kernel":
            state[f"{module}.weight"] = kernel_to_torch(value)
        elif _is_bn(path[-2]) and leaf in _BN_PARAM_TO_TORCH:
            state[f"{module}.{_BN_PARAM_TO_TORCH[leaf]}"] = value
        else:
            raise ValueError(f"torch_layout: unexpected encoder parameter {'/'.join(path)}")
    for path, value in _flat(batch_stats).items():
        module, leaf = _encoder_module_to_torch(path[:-1]), path[-1]
        if leaf not in _BN_STAT_TO_TORCH:
            raise ValueError(f"torch_layout: unexpected encoder statistic {'/'.join(path)}")
        state[f"{module}.{_BN_STAT_TO_TORCH[leaf]}"] = value
        if num_batches_tracked and leaf == "mean":
            state[f"{module}.num_batches_tracked"] = np.array(0, np.int64)
    return {k: state[k] for k in sorted(state, key=_torch_order)}


def encoder_from_torch(state: Mapping[str, np.ndarray]) -> tuple[Tree, Tree]:
    """A torchvision ResNet state dict (any depth) as jdepth `ResNetEncoder` variables.

    `fc.*` (the ImageNet classifier) and `*.num_batches_tracked` are dropped; every other key must
    be a ResNet module.

    Args:
        state: {torchvision key: array}, without a prefix.

    Returns:
        (params, batch_stats) subtrees for a `ResNetEncoder`, kernels in HWIO.
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith(".num_batches_tracked"):
            continue
        module, leaf = key.rsplit(".", 1) if "." in key else (key, "")
        path = _encoder_module_from_torch(module)
        if _is_bn(path[-1]) and leaf in _BN_FROM_TORCH:
            collection, name = _BN_FROM_TORCH[leaf]
            flat[(collection, *path, name)] = np.asarray(value)
        elif not _is_bn(path[-1]) and leaf == "weight":
            flat[("params", *path, "kernel")] = kernel_from_torch(value)
        else:
            raise ValueError(f"torch_layout: unexpected key {key!r} in a ResNet state dict")
    if ("params", "conv1", "kernel") not in flat:
        raise ValueError("torch_layout: not a ResNet state dict (no conv1.weight)")
    tree = _unflat(flat)
    return tree["params"], tree.get("batch_stats", {})


def stack_conv1(state: Mapping[str, np.ndarray], num_input_images: int) -> StateDict:
    """A 3-channel ImageNet state dict adapted to `num_input_images` stacked frames.

    Monodepth2's rule for its pose encoder: conv1's weight is repeated along the input-channel
    axis and divided by the number of images, so a stack of identical frames gives exactly the
    ImageNet conv1 response. Other entries are returned unchanged.

    Args:
        state: torchvision keys; `conv1.weight` is `[64, 3, 7, 7]`.
        num_input_images: frames stacked on the channel axis.

    Returns:
        A new state dict with `conv1.weight` `[64, 3 * num_input_images, 7, 7]`.
    """
    weight = np.asarray(state["conv1.weight"])
    if weight.shape[1] != 3:
        raise ValueError(f"torch_layout: conv1.weight should take 3 channels, got {weight.shape}")
    if num_input_images == 1:
        return dict(state)
    stacked = np.concatenate([weight] * num_input_images, axis=1) / num_input_images
    return {**state, "conv1.weight": stacked.astype(weight.dtype)}


def classifier_zeros(num_features: int) -> StateDict:
    """torchvision's `fc` entries, zero-filled: jdepth has no classifier, but a strict
    `load_state_dict` into a torchvision ResNet (Monodepth2's encoders hold one) needs the keys."""
    return {
        "fc.weight": np.zeros((_CLASSES, num_features), np.float32),
        "fc.bias": np.zeros((_CLASSES,), np.float32),
    }


# --- Depth decoder. -------------------------------------------------------------------------------

_DECODER_TORCH = re.compile(r"^decoder\.(\d+)\.conv\.(conv\.)?(weight|bias)$")


def depth_decoder_to_torch(params: Mapping) -> StateDict:
    """A jdepth `DepthDecoder`'s params as Monodepth2 DepthDecoder keys (`decoder.N...`).

    The dispconv order is ascending scale, the reference's `range(4)` default.
    """
    flat = _flat(params)
    scales = sorted({int(p[0].split("_")[1]) for p in flat if p[0].startswith("dispconv_")})
    state = {}
    for path, value in flat.items():
        module, leaf = path[0], path[-1]
        index = decoder_torch_index(module, scales)
        inner = "conv.conv" if module.startswith("upconv_") else "conv"
        torch_leaf = {"kernel": "weight", "bias": "bias"}[leaf]
        state[f"decoder.{index}.{inner}.{torch_leaf}"] = (
            kernel_to_torch(value) if leaf == "kernel" else value
        )
    return {k: state[k] for k in sorted(state, key=_torch_order)}


def depth_decoder_from_torch(state: Mapping[str, np.ndarray]) -> Tree:
    """Monodepth2 DepthDecoder keys -> jdepth `DepthDecoder` params.

    The scale of each dispconv is read from its input channels (NUM_CH_DEC[s]), so a decoder built
    with any `scales` order converts correctly.
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state.items():
        match = _DECODER_TORCH.match(key)
        if not match:
            raise ValueError(f"torch_layout: unexpected key {key!r} in a depth decoder state dict")
        index, inner_conv, leaf = int(match.group(1)), match.group(2), match.group(3)
        if index < 10 and inner_conv:
            module = f"upconv_{4 - index // 2}_{index % 2}"
        elif index >= 10 and not inner_conv:
            in_channels = np.asarray(state[f"decoder.{index}.conv.weight"]).shape[1]
            module = f"dispconv_{NUM_CH_DEC.index(in_channels)}"
        else:
            raise ValueError(f"torch_layout: unexpected key {key!r} in a depth decoder state dict")
        inner = ("conv", "conv") if module.startswith("upconv_") else ("conv",)
        value = np.asarray(value)
        flat[(module, *inner, "kernel" if leaf == "weight" else "bias")] = (
            kernel_from_torch(value) if leaf == "weight" else value
        )
    return _unflat(flat)


# --- Pose decoder. --------------------------------------------------------------------------------


def pose_decoder_to_torch(params: Mapping) -> StateDict:
    """A jdepth `PoseDecoder`'s params as Monodepth2 PoseDecoder keys (`net.N.{weight,bias}`)."""
    state = {}
    for path, value in _flat(params).items():
        module, leaf = path
        if module not in _POSE_NET_INDEX:
            raise ValueError(f"torch_layout: unexpected pose decoder module {module!r}")
        torch_leaf = {"kernel": "weight", "bias": "bias"}[leaf]
        state[f"net.{_POSE_NET_INDEX[module]}.{torch_leaf}"] = (
            kernel_to_torch(value) if leaf == "kernel" else value
        )
    return {k: state[k] for k in sorted(state, key=_torch_order)}


def pose_decoder_from_torch(state: Mapping[str, np.ndarray]) -> Tree:
    """Monodepth2 PoseDecoder keys (`net.N...`) -> jdepth `PoseDecoder` params."""
    names = {v: k for k, v in _POSE_NET_INDEX.items()}
    flat = {}
    for key, value in state.items():
        match = re.match(r"^net\.(\d)\.(weight|bias)$", key)
        if not match or int(match.group(1)) not in names:
            raise ValueError(f"torch_layout: unexpected key {key!r} in a pose decoder state dict")
        module, leaf = names[int(match.group(1))], match.group(2)
        value = np.asarray(value)
        flat[(module, "kernel" if leaf == "weight" else "bias")] = (
            kernel_from_torch(value) if leaf == "weight" else value
        )
    return _unflat(flat)


# --- Plain convolutions (extra modules of other encoders). ----------------------------------------


def conv_to_torch(params: Mapping, prefix: str) -> StateDict:
    """`{kernel, bias}` of one conv -> `{prefix.weight, prefix.bias}`."""
    state = {f"{prefix}.weight": kernel_to_torch(params["kernel"])}
    if "bias" in params:
        state[f"{prefix}.bias"] = np.asarray(params["bias"])
    return state


def conv_from_torch(state: Mapping[str, np.ndarray], prefix: str) -> Tree:
    """Inverse of `conv_to_torch`."""
    params = {"kernel": kernel_from_torch(state[f"{prefix}.weight"])}
    if f"{prefix}.bias" in state:
        params["bias"] = np.asarray(state[f"{prefix}.bias"])
    return params


def with_prefix(state: Mapping[str, np.ndarray], prefix: str) -> StateDict:
    """Every key with `prefix` prepended (e.g. Monodepth2's `encoder.` wrapper attribute)."""
    return {f"{prefix}{k}": v for k, v in state.items()}


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str) -> StateDict:
    """The entries under `prefix`, with it removed; other keys are left out."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
