"""HRNet-18 encoder, DIFFNet decoder, scale head and the depth-network switch.

Shapes and parameter counts go through `jax.eval_shape` (no compile). Real forward passes are the
small scale head and, against timm's PyTorch HRNet (skipped without timm), one encoder pass.
"""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import traverse_util

from conftest import tiny_config
from jdepth.models.depth_decoder import DepthNet
from jdepth.models.diffnet_decoder import DiffNetDecoder, HRDepthNet
from jdepth.models.hrnet import HRNetEncoder, NUM_CH_ENC, upsample_bilinear_aligned
from jdepth.models.scale_head import ScaleHead, gamma_from_logit, logit_from_gamma
from jdepth.training import monodepth

# timm hrnet_w18 with features_only=True (the modules DIFFNet's encoder has: stem, layer1,
# transitions, stages 2-4; no classification head) has exactly this many parameters and BatchNorm
# running statistics. The full classifier hrnet_w18 has 21,299,004.
HRNET18_ENCODER_PARAMS = 9_562_260
HRNET18_ENCODER_BN_STATS = 33_936
RESNET18_ENCODER_PARAMS = 11_176_512


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _abstract_init(model, *arrays, **static):
    return jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a, **static), *arrays)


IMAGE = jax.ShapeDtypeStruct((2, 64, 192, 3), jnp.float32)


def test_encoder_parameter_count_matches_hrnet_w18_exactly():
    variables = _abstract_init(HRNetEncoder(), IMAGE, train=False)
    assert _count(variables["params"]) == HRNET18_ENCODER_PARAMS
    assert _count(variables["batch_stats"]) == HRNET18_ENCODER_BN_STATS
    # 4 branch outputs of 1 + 4 + 3 modules, each with 4 BasicBlocks of 2 convs.
    flat = traverse_util.flatten_dict(variables["params"])
    modules = {k[0] for k in flat if k[0].startswith("stage")}
    assert modules == {"stage2_0", *(f"stage3_{m}" for m in range(4)),
                       *(f"stage4_{m}" for m in range(3))}


def test_encoder_groups_have_diffnet_channels_and_strides():
    model = HRNetEncoder()
    variables = _abstract_init(model, IMAGE, train=False)
    groups, aux = jax.eval_shape(lambda v, x: model.apply(v, x, False), variables, IMAGE)
    assert [[f.shape for f in g] for g in groups] == [
        [(2, 32, 96, 64)],
        [(2, 16, 48, 64)] + [(2, 16, 48, 18)] * 3,
        [(2, 8, 24, 36)] * 3,
        [(2, 4, 12, 72)] * 2,
        [(2, 2, 6, 144)],
    ]
    assert [f.shape for f in aux["pyramid"]] == [
        (2, 64 // 2**k, 192 // 2**k, c) for k, c in zip(range(1, 6), NUM_CH_ENC)
    ]


def test_diffnet_decoder_parameter_count():
    def conv(c_in, c_out):  # 3x3 with bias
        return 9 * c_in * c_out + c_out

    def fusion(c_in, c_out):  # channel attention (2 bias-free FCs, C/16) + 3x3 conv
        return 2 * c_in * (c_in // 16) + conv(c_in, c_out)

    expected = (
        fusion(144 + 2 * 72, 256)  # 674,176
        + fusion(256 + 3 * 36, 128)  # 435,472
        + fusion(128 + 64 + 3 * 18, 64)  # 149,140
        + fusion(64 + 64, 32)  # 38,944
        + conv(32, 16) + conv(16, 16)  # up_x9_0, up_x9_1
        + conv(16, 1) + conv(32, 1) + conv(64, 1) + conv(128, 1)  # dispconvs
    )
    assert expected == 1_306_840
    variables = _abstract_init(HRDepthNet(), IMAGE, train=False)
    assert _count(variables["params"]["decoder"]) == expected
    assert _count(variables["params"]["encoder"]) == HRNET18_ENCODER_PARAMS
    assert set(variables["batch_stats"]) == {"encoder"}


def test_hrdepthnet_outputs_match_depthnet_convention():
    hr, resnet = HRDepthNet(scale_head=True), DepthNet(18)
    outs = {}
    for name, model in (("hr", hr), ("resnet", resnet)):
        variables = _abstract_init(model, IMAGE, train=False)
        outs[name] = jax.eval_shape(lambda v, x, m=model: m.apply(v, x, False), variables, IMAGE)
    (disps, aux), (ref_disps, ref_aux) = outs["hr"], outs["resnet"]
    assert {s: d.shape for s, d in disps.items()} == {
        s: (2, 64 // 2**s, 192 // 2**s, 1) for s in range(4)
    }
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), disps) == jax.tree_util.tree_map(
        lambda a: (a.shape, a.dtype), ref_disps
    )
    # The decoder levels (contrastive loss) have the ResNet decoder's shapes; the encoder pyramid
    # (panoptic head) has the same strides, HRNet's channels.
    assert {k: v.shape for k, v in aux["decoder_features"].items()} == {
        k: v.shape for k, v in ref_aux["decoder_features"].items()
    }
    assert [f.shape[:3] for f in aux["encoder_features"]] == [
        f.shape[:3] for f in ref_aux["encoder_features"]
    ]
    assert aux["scale"].shape == (2,)


def test_bilinear_aligned_upsampling_reproduces_a_linear_ramp_and_corners():
    # align_corners=True: output o samples input o * (n - 1) / (N - 1); a linear function of the
    # pixel index is reproduced exactly, and the corner pixels coincide.
    h, w = 3, 4
    ramp = (2.0 * np.arange(h)[:, None] + 0.5 * np.arange(w)[None, :]).astype(np.float32)
    x = jnp.asarray(ramp)[None, :, :, None]
    up = np.asarray(upsample_bilinear_aligned(x, 4))[0, :, :, 0]
    ys = np.arange(4 * h) * (h - 1) / (4 * h - 1)
    xs = np.arange(4 * w) * (w - 1) / (4 * w - 1)
    np.testing.assert_allclose(up, 2.0 * ys[:, None] + 0.5 * xs[None, :], rtol=1e-5, atol=1e-5)
    assert up[0, 0] == ramp[0, 0] and up[-1, -1] == ramp[-1, -1]
    # A 1-pixel map (stride 32 of a 32-pixel image) is copied everywhere.
    one = jnp.full((1, 1, 1, 2), 3.0)
    np.testing.assert_array_equal(upsample_bilinear_aligned(one, 2), jnp.full((1, 2, 2, 2), 3.0))


def test_scale_head_output_lies_in_the_configured_range():
    # Log-uniform in the range: logit 0 is the geometric centre.
    np.testing.assert_allclose(gamma_from_logit(jnp.array([-1e4, 0.0, 1e4]), 0.5, 2.5),
                               [0.5, np.sqrt(0.5 * 2.5), 2.5], rtol=1e-6)
    for ratio in (0.05, 58.0):
        logit = logit_from_gamma(ratio, 1e-3, 1e3)
        np.testing.assert_allclose(gamma_from_logit(logit, 1e-3, 1e3), ratio, rtol=1e-5)
    head = ScaleHead(features=8, gamma_min=0.5, gamma_max=2.5)
    features = jax.random.normal(jax.random.key(1), (3, 2, 6, 144)) * jnp.array([1.0, 100.0, 1e4])[
        :, None, None, None
    ]
    variables = head.init(jax.random.key(0), features)
    # The last conv starts at zero: gamma starts at the centre whatever the features.
    np.testing.assert_allclose(head.apply(variables, features), np.full(3, np.sqrt(1.25)),
                               rtol=1e-6)
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    params["conv3"]["kernel"] = jax.random.normal(jax.random.key(2), params["conv3"]["kernel"].shape)
    gamma = head.apply({"params": params}, features)
    assert gamma.shape == (3,) and gamma.dtype == jnp.float32
    assert np.all((np.asarray(gamma) >= 0.5) & (np.asarray(gamma) <= 2.5))
    assert len(set(np.asarray(gamma).tolist())) == 3
    # Four 3x3 convs: 144 -> 8 -> 8 -> 8 -> 1, and the global log-scale (one scalar, 0 at init).
    assert _count(variables["params"]) == (9 * 144 * 8 + 8) + 2 * (9 * 8 * 8 + 8) + (9 * 8 + 1) + 1
    assert float(variables["params"]["global_log_scale"]) == 0.0
    params["global_log_scale"] = jnp.float32(4.0)  # every image's gamma x e^4, beyond the range
    np.testing.assert_allclose(head.apply({"params": params}, features), np.exp(4.0) * gamma,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="gamma_min"):
        ScaleHead(gamma_min=2.0, gamma_max=1.0).init(jax.random.key(0), features)


def test_depth_arch_switch_keeps_resnet_the_default():
    config = tiny_config()
    assert "depth_arch" not in config.model  # existing configs are untouched
    assert isinstance(monodepth.build_networks(config)["depth"], DepthNet)
    config.model.depth_arch = "hrnet"
    config.model.scale_head = True
    net = monodepth.build_networks(config)["depth"]
    assert isinstance(net, HRDepthNet) and net.scale_head
    config.model.depth_arch = "resnet"
    with pytest.raises(ValueError, match="scale_head"):
        monodepth.build_networks(config)
    config.model.depth_arch = "vgg"
    with pytest.raises(ValueError, match="depth_arch"):
        monodepth.build_networks(config)


# --- Parity with timm's PyTorch HRNet-W18 (skipped without timm + torch). ----------------------


def _timm_hrnet18_features():
    torch = pytest.importorskip("torch")
    # timm imports torchvision; the CPU environment's torchvision only imports with this stub
    # (reference/ENV_NOTES.md). Either may be missing: skip then.
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    try:
        import timm
    except Exception as e:  # noqa: BLE001 - any import failure means "no reference here"
        pytest.skip(f"timm not importable: {e}")
    torch.manual_seed(0)
    model = timm.create_model("hrnet_w18", pretrained=False, features_only=True,
                              feature_location="")
    return torch, model.eval()


def torch_key(path: tuple[str, ...]) -> str:
    """flax path of HRNetEncoder (jdepth/models/hrnet.py docstring) -> torch state-dict key."""
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
            "var": "running_var"}[path[-1]]
    parts = []
    for name in path[:-1]:
        if m := re.fullmatch(r"(layer1|stage\d)_(\d+)", name):
            parts += [m[1], m[2]]
        elif m := re.fullmatch(r"branch(\d+)_(\d+)", name):
            parts += ["branches", m[1], m[2]]
        elif m := re.fullmatch(r"fuse_(\d+)_(\d+)_(\d+)(_bn)?", name):
            i, j, k = int(m[1]), int(m[2]), m[3]
            parts += ["fuse_layers", str(i), str(j)] + ([] if j > i else [k])
            parts.append("1" if m[4] else "0")
        elif m := re.fullmatch(r"transition(\d)_(\d+)_(conv|bn)", name):
            t, i = int(m[1]), int(m[2])
            new_branch = i > 0 and i == t  # transition t adds branch t
            parts += [f"transition{t}", str(i)] + (["0"] if new_branch else [])
            parts.append("0" if m[3] == "conv" else "1")
        elif name == "downsample_conv":
            parts += ["downsample", "0"]
        elif name == "downsample_bn":
            parts += ["downsample", "1"]
        else:
            parts.append(name)
    return ".".join(parts + [leaf])


@pytest.mark.slow
def test_encoder_matches_timm_hrnet_w18_with_converted_weights():
    torch, reference = _timm_hrnet18_features()
    state = {k: v.numpy() for k, v in reference.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    # Random but non-trivial running statistics, so eval-mode BatchNorm is exercised.
    rng = np.random.default_rng(0)
    for k in state:
        if k.endswith("running_mean"):
            state[k] = rng.normal(0, 0.1, state[k].shape).astype(np.float32)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 1.5, state[k].shape).astype(np.float32)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)

    # The official classification HRNet (timm) upsamples nearest; DIFFNet bilinear.
    model = HRNetEncoder(normalize_input=False, fuse_upsample="nearest")
    image = np.random.default_rng(1).uniform(size=(1, 64, 96, 3)).astype(np.float32)
    abstract = _abstract_init(model, jnp.asarray(image), train=False)
    flat = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(abstract[collection]).items():
            value = state.pop(torch_key(path))
            if value.ndim == 4:
                value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            assert value.shape == leaf.shape, path
            flat[(collection, *path)] = jnp.asarray(value)
    assert not state, f"torch keys without a flax counterpart: {sorted(state)[:5]}"
    variables = traverse_util.unflatten_dict(flat)

    _, aux = jax.jit(lambda v, x: model.apply(v, x, False))(variables, jnp.asarray(image))
    with torch.no_grad():
        expected = reference(torch.from_numpy(image.transpose(0, 3, 1, 2)))
    assert len(expected) == 5
    for ours, theirs in zip(aux["pyramid"], expected):
        theirs = theirs.numpy().transpose(0, 2, 3, 1)
        # Untrained weights with random statistics let activations grow through ~300 layers, so
        # float32 agreement is judged relative to each map's magnitude.
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-3,
                                   atol=1e-5 * np.abs(theirs).max())
