"""Tests for the Monodepth2 networks (jdepth/models).

Big inputs (192x640) only go through `jax.eval_shape`; real forward passes use 32x32 / 64x96 inputs.
Numerical parity with the PyTorch reference networks is tested in tests/test_interop.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jdepth.models.depth_decoder import DepthDecoder, DepthNet, decoder_torch_index
from jdepth.models.layers import Conv3x3, reflection_pad, upsample_nearest_2x
from jdepth.models.pose_net import PoseDecoder, PoseNet
from jdepth.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNetEncoder,
    encoder_channels,
    max_pool_3x3_s2,
)

pytestmark = pytest.mark.usefixtures("fast_compiles")


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _abstract_init(model, *arrays, **static):
    """`model.init` under eval_shape: nothing is computed; arrays may be ShapeDtypeStructs."""
    return jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a, **static), *arrays)


def _images(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape)


def _random_variables(model, *arrays, seed=0, **static):
    """Variables with the model's tree and shapes, filled by numpy.

    Compiling flax's threefry-based initialisers for a whole ResNet takes ~30 s on this CPU, far
    more than the forward passes under test; the initialisers themselves are tested separately.
    """
    rng = np.random.default_rng(seed)
    fills = {
        "kernel": lambda shape: rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape),
        "var": lambda shape: rng.uniform(0.5, 1.5, shape),
        "scale": lambda shape: rng.uniform(0.8, 1.2, shape),
        "bias": lambda shape: rng.normal(0.0, 0.1, shape),
        "mean": lambda shape: rng.normal(0.0, 0.1, shape),
    }
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(fills[path[-1].key](leaf.shape), leaf.dtype),
        _abstract_init(model, *arrays, **static),
    )


# --- Parameter counts. ----------------------------------------------------------------------------


# torchvision resnet18 / 34 / 50 totals (11,689,512 / 21,797,672 / 25,557,032) minus the fc layer
# (512 * 1000 + 1000, resp. 2048 * 1000 + 1000).
@pytest.mark.parametrize("num_layers, expected", [(18, 11_176_512), (34, 21_284_672),
                                                  (50, 23_508_032)])
def test_encoder_parameter_count_and_channels(num_layers, expected):
    model, image = ResNetEncoder(num_layers), jax.ShapeDtypeStruct((1, 192, 640, 3), jnp.float32)
    variables = _abstract_init(model, image, train=False)
    assert _count(variables["params"]) == expected
    features, _ = jax.eval_shape(lambda v, x: model.apply(v, x, False), variables, image)
    assert [f.shape[1:] for f in features] == [
        (192 // 2**k, 640 // 2**k, c) for k, c in zip(range(1, 6), encoder_channels(num_layers))
    ]
    # Running statistics live in their own collection: a mean and a var per BN scale and bias.
    assert set(variables) == {"params", "batch_stats"}
    bn_params = {k: v for k, v in traverse_util.flatten_dict(variables["params"]).items()
                 if k[-2].startswith(("bn", "downsample_bn"))}
    assert _count(variables["batch_stats"]) == _count(bn_params) > 0


def test_depth_decoder_parameter_count():
    # conv3x3 with bias: 9 * c_in * c_out + c_out.
    def conv(c_in, c_out):
        return 9 * c_in * c_out + c_out

    expected = (
        conv(512, 256) + conv(256 + 256, 256)  # level 4: 1,179,904 + 1,179,904
        + conv(256, 128) + conv(128 + 128, 128)  # level 3: 295,040 + 295,040
        + conv(128, 64) + conv(64 + 64, 64)  # level 2: 73,792 + 73,792
        + conv(64, 32) + conv(32 + 64, 32)  # level 1: 18,464 + 27,680
        + conv(32, 16) + conv(16, 16)  # level 0: 4,624 + 2,320 (no skip)
        + conv(16, 1) + conv(32, 1) + conv(64, 1) + conv(128, 1)  # dispconvs: 145+289+577+1153
    )
    assert expected == 3_152_724
    variables = _abstract_init(DepthNet(18), jnp.zeros((1, 64, 96, 3)), train=False)
    assert _count(variables["params"]["decoder"]) == expected
    assert _count(variables["params"]["encoder"]) == 11_176_512
    assert set(variables["batch_stats"]) == {"encoder"}  # the decoder has no BatchNorm


def test_posenet_parameter_count():
    expected = (
        (512 * 256 + 256)  # squeeze 1x1: 131,328
        + 2 * (9 * 256 * 256 + 256)  # pose_0, pose_1 3x3: 590,080 each
        + (256 * 12 + 12)  # pose_2 1x1 to 6 * 2 frames: 3,084
    )
    assert expected == 1_314_572
    x = jnp.zeros((1, 64, 64, 3))
    variables = _abstract_init(PoseNet(18), x, x, train=False)
    assert _count(variables["params"]["decoder"]) == expected
    assert variables["params"]["decoder"]["pose_2"]["kernel"].shape == (1, 1, 256, 12)
    # The pose encoder takes 2 stacked frames: conv1 grows by 7*7*3*64 = 9,408 weights.
    assert variables["params"]["encoder"]["conv1"]["kernel"].shape == (7, 7, 6, 64)
    assert _count(variables["params"]["encoder"]) == 11_176_512 + 9_408


# --- Shapes and dtypes at the training resolution (abstract evaluation only). ---------------------


def test_depthnet_shapes_at_640x192():
    model = DepthNet(18)
    image = jax.ShapeDtypeStruct((2, 192, 640, 3), jnp.float32)
    variables = _abstract_init(model, image, train=False)
    disps, aux = jax.eval_shape(lambda v, x: model.apply(v, x, False), variables, image)
    assert [f.shape[1:] for f in aux["encoder_features"]] == [
        (96, 320, 64), (48, 160, 64), (24, 80, 128), (12, 40, 256), (6, 20, 512)]
    assert {s: d.shape for s, d in disps.items()} == {
        0: (2, 192, 640, 1), 1: (2, 96, 320, 1), 2: (2, 48, 160, 1), 3: (2, 24, 80, 1)}
    assert {i: f.shape[1:] for i, f in aux["decoder_features"].items()} == {
        0: (192, 640, 16), 1: (96, 320, 32), 2: (48, 160, 64), 3: (24, 80, 128), 4: (12, 40, 256)}


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model = DepthNet(18, dtype=jnp.bfloat16)
    image = jax.ShapeDtypeStruct((1, 192, 640, 3), jnp.float32)
    variables = _abstract_init(model, image, train=False)
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    (disps, aux), _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]), variables, image
    )
    assert all(d.dtype == jnp.float32 for d in disps.values())
    assert all(f.dtype == jnp.bfloat16 for f in aux["encoder_features"])

    pose = PoseNet(18, dtype=jnp.bfloat16)
    pose_vars = _abstract_init(pose, image, image, train=False)
    (axisangle, translation), _ = jax.eval_shape(
        lambda v, a, b: pose.apply(v, a, b, False), pose_vars, image, image
    )
    assert axisangle.dtype == translation.dtype == jnp.float32


# --- Shared building blocks and initialisers. -----------------------------------------------------


def test_reflection_pad_and_nearest_upsample():
    x = jnp.arange(6.0).reshape(1, 2, 3, 1)  # rows [0 1 2], [3 4 5]
    padded = reflection_pad(x, 1)[0, :, :, 0]
    # Mirror without repeating the edge: row order 1,0,1,... and column order 1,0,1,2,1.
    np.testing.assert_array_equal(padded, [[4, 3, 4, 5, 4], [1, 0, 1, 2, 1]] * 2)
    up = upsample_nearest_2x(x)[0, :, :, 0]
    np.testing.assert_array_equal(up, [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2)
    with pytest.raises(ValueError, match="layers.py"):
        reflection_pad(jnp.zeros((1, 1, 4, 1)), 1)


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - jnp.arange(16.0).reshape(1, 4, 4, 1)  # all negative, largest (-1) at the corner
    pooled = max_pool_3x3_s2(x)[0, :, :, 0]
    # Windows over padded rows/cols -1..1 and 1..3: zero padding would give 0 at the corner.
    np.testing.assert_array_equal(pooled, [[-1.0, -2.0], [-5.0, -6.0]])
    assert max_pool_3x3_s2(jnp.zeros((1, 5, 7, 1))).shape == (1, 3, 4, 1)


def test_initialisers_follow_torch():
    # Decoder convs: torch.nn.Conv2d default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both.
    x = jnp.zeros((1, 4, 4, 64))
    params = Conv3x3(128).init(jax.random.key(0), x)["params"]["conv"]
    bound = 1.0 / np.sqrt(9 * 64)
    for name in ("kernel", "bias"):
        values = np.asarray(params[name])
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.95 * bound  # really uniform over the full range
    np.testing.assert_allclose(np.asarray(params["kernel"]).std(), bound / np.sqrt(3), rtol=0.02)
    # Encoder convs: torchvision's kaiming_normal_(fan_out, relu), std sqrt(2 / (9 * 64)); BN 1/0.
    variables = BasicBlock(planes=64).init(jax.random.key(1), x, False)
    kernel = np.asarray(variables["params"]["conv1"]["kernel"])
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 64)), rtol=0.02)
    np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], np.ones(64))
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], np.ones(64))
    assert "downsample_conv" not in variables["params"]  # same width, stride 1: identity shortcut


def _numpy_conv(x, w, stride, pad):
    """torch.nn.functional.conv2d semantics on NHWC / HWIO numpy arrays (zero padding)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    h_out = (x.shape[1] - kh) // stride + 1
    w_out = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], h_out, w_out, w.shape[3]), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            patch = x[:, dy : dy + stride * h_out : stride, dx : dx + stride * w_out : stride]
            out += patch @ w[dy, dx]
    return out


def _numpy_bn(y, params, stats):
    return (y - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]


@pytest.mark.parametrize("block_cls", [BasicBlock, Bottleneck])
def test_stride2_block_matches_numpy_reference(block_cls):
    """Eval-mode stride-2 blocks (torch padding, stride on the 3x3 conv) against plain numpy."""
    x = _images((2, 6, 6, 8), seed=2) - 0.5
    block = block_cls(planes=4, stride=2)
    variables = _random_variables(block, x, train=False, seed=3)
    out = jax.jit(lambda v, x: block.apply(v, x, False))(variables, x)

    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    s = jax.tree_util.tree_map(np.asarray, variables["batch_stats"])
    bn = lambda y, name: _numpy_bn(y, p[name], s[name])  # noqa: E731
    relu = lambda y: np.maximum(y, 0.0)  # noqa: E731
    xn = np.asarray(x, np.float64)
    if block_cls is BasicBlock:
        y = relu(bn(_numpy_conv(xn, p["conv1"]["kernel"], 2, 1), "bn1"))
        y = bn(_numpy_conv(y, p["conv2"]["kernel"], 1, 1), "bn2")
    else:
        y = relu(bn(_numpy_conv(xn, p["conv1"]["kernel"], 1, 0), "bn1"))
        y = relu(bn(_numpy_conv(y, p["conv2"]["kernel"], 2, 1), "bn2"))
        y = bn(_numpy_conv(y, p["conv3"]["kernel"], 1, 0), "bn3")
    shortcut = bn(_numpy_conv(xn, p["downsample_conv"]["kernel"], 2, 0), "downsample_bn")
    np.testing.assert_allclose(out, relu(y + shortcut), rtol=1e-4, atol=1e-5)


# --- The encoder on small inputs: padding, BatchNorm statistics, pmap. ----------------------------

_ENCODER = ResNetEncoder(18)
_encoder_eval = jax.jit(lambda v, x: _ENCODER.apply(v, x, False, mutable=["batch_stats"]))
_encoder_train = jax.jit(
    lambda v, x: _ENCODER.apply(
        v, x, True, mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda mdl, _: mdl.path == ("conv1",),
    )
)


@pytest.fixture(scope="module")
def small_encoder_inputs():
    image = _images((4, 32, 32, 3), seed=5)
    return _random_variables(_ENCODER, image, train=False, seed=6), image


def test_conv1_uses_symmetric_padding_3(small_encoder_inputs):
    """A delta kernel at the centre tap reads input pixel (2i, 2j) as torch does ('SAME': 2i+1)."""
    variables, image = small_encoder_inputs
    kernel = np.zeros((7, 7, 3, 64), np.float32)
    kernel[3, 3, 0, :] = 1.0
    params = dict(variables["params"], conv1={"kernel": jnp.asarray(kernel)})
    (features, _), _ = _encoder_eval(dict(variables, params=params), image)
    normalised = (np.asarray(image)[:, ::2, ::2, :1] - 0.45) / 0.225
    p, s = variables["params"]["bn1"], variables["batch_stats"]["bn1"]
    expected = np.maximum(_numpy_bn(normalised, p, s), 0.0)
    np.testing.assert_allclose(features[0], expected, rtol=1e-4, atol=1e-5)


def test_batch_stats_update_in_train_mode_only(small_encoder_inputs):
    variables, image = small_encoder_inputs
    _, eval_state = _encoder_eval(variables, image)
    jax.tree_util.tree_map(np.testing.assert_array_equal, eval_state["batch_stats"],
                           variables["batch_stats"])

    _, state = _encoder_train(variables, image)
    conv1_out = state["intermediates"]["conv1"]["__call__"][0]
    old = variables["batch_stats"]["bn1"]
    new = state["batch_stats"]["bn1"]
    # torch momentum 0.1: new = 0.9 * old + 0.1 * batch statistic (unbiased variance, as torch).
    for stat, kwargs in (("mean", {}), ("var", {"ddof": 1})):
        batch_stat = getattr(conv1_out, stat)(axis=(0, 1, 2), **kwargs)
        np.testing.assert_allclose(new[stat], 0.9 * old[stat] + 0.1 * batch_stat, rtol=1e-4,
                                   atol=1e-6)
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a != b)), state["batch_stats"],
                                     variables["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))


def test_pmap_batch_stats_match_single_device_on_concatenated_batch(small_encoder_inputs):
    assert jax.local_device_count() >= 2, "tests/conftest.py should force 2 CPU devices"
    variables, image = small_encoder_inputs
    synced = ResNetEncoder(18, bn_axis_name="batch")
    (feats_pmap, _), state_pmap = jax.pmap(
        lambda v, x: synced.apply(v, x, True, mutable=["batch_stats"]),
        axis_name="batch", in_axes=(None, 0),
    )(variables, image.reshape(2, 2, *image.shape[1:]))
    (feats_one, _), state_one = _encoder_train(variables, image)

    # Both devices hold the statistics of the whole (concatenated) batch.
    jax.tree_util.tree_map(
        lambda per_device, single: np.testing.assert_allclose(
            per_device, np.stack([single, single]), rtol=1e-4, atol=1e-6),
        state_pmap["batch_stats"], state_one["batch_stats"])
    # Normalising with the global statistics makes every feature equal to the single-device one
    # (up to float32 rounding, amplified at layer4 where each channel sees only 4 values).
    for f_pmap, f_one in zip(feats_pmap, feats_one):
        np.testing.assert_allclose(f_pmap.reshape(f_one.shape), f_one, rtol=1e-3, atol=1e-3)


# --- DepthNet and PoseNet forward passes on small inputs. -----------------------------------------

_DEPTHNET = DepthNet(18)


@pytest.fixture(scope="module")
def depthnet_run():
    """One eval-mode DepthNet pass at 64x96."""
    image = _images((2, 64, 96, 3), seed=7)
    variables = _random_variables(_DEPTHNET, image, train=False, seed=8)
    eval_out = jax.jit(lambda v, x: _DEPTHNET.apply(v, x, False))(variables, image)
    return variables, image, eval_out


def test_depthnet_forward_small(depthnet_run):
    variables, _, (disps, aux) = depthnet_run
    for s, d in disps.items():
        assert d.shape == (2, 64 // 2**s, 96 // 2**s, 1)
        # Sigmoid range (random weights saturate some pixels to exactly 1.0 in float32).
        assert bool(jnp.all((d >= 0) & (d <= 1)))
    assert aux["decoder_features"][0].shape == (2, 64, 96, 16)
    # Each disparity is the sigmoid of dispconv_s applied to the level-s decoder feature.
    dispconv = jax.jit(lambda p, x: jax.nn.sigmoid(Conv3x3(1).apply({"params": p}, x)))
    for s in (0, 2):
        params = variables["params"]["decoder"][f"dispconv_{s}"]
        expected = dispconv(params, aux["decoder_features"][s])
        np.testing.assert_allclose(disps[s], expected, rtol=1e-5, atol=1e-6)


def test_posenet_output_is_scaled_mean_of_pose_conv():
    model = PoseNet(18)
    frame_a, frame_b = _images((2, 64, 96, 3), seed=9), _images((2, 64, 96, 3), seed=10)
    variables = _random_variables(model, frame_a, frame_b, train=False, seed=11)
    # The decoder gets its real (torch-default) initialisation: the magnitude check depends on it.
    decoder = PoseDecoder(encoder_channels(18)).init(jax.random.key(1), [jnp.zeros((1, 2, 3, 512))])
    variables = dict(variables, params=dict(variables["params"], decoder=decoder["params"]))
    # Train mode: batch statistics keep the encoder output O(1) whatever the random BN statistics.
    apply = jax.jit(lambda v, a, b: model.apply(
        v, a, b, True, mutable=["intermediates", "batch_stats"],
        capture_intermediates=lambda mdl, _: mdl.path == ("decoder", "pose_2")))
    ((axisangle, translation), aux), state = apply(variables, frame_a, frame_b)
    assert axisangle.shape == translation.shape == (2, 3)
    assert aux["axisangle"].shape == aux["translation"].shape == (2, 2, 3)
    raw = state["intermediates"]["decoder"]["pose_2"]["__call__"][0]  # [B, h, w, 12]
    assert raw.shape == (2, 2, 3, 12)
    expected = 0.01 * raw.mean(axis=(1, 2)).reshape(2, 2, 6)
    np.testing.assert_allclose(aux["axisangle"], expected[..., :3], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(aux["translation"], expected[..., 3:], rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(axisangle, aux["axisangle"][:, 0])
    np.testing.assert_array_equal(translation, aux["translation"][:, 0])
    # With the torch-default decoder initialisation the x0.01 scaling keeps poses near identity.
    pose = jnp.concatenate([axisangle, translation])
    assert 0.0 < float(jnp.max(jnp.abs(pose))) < 0.01


def test_posenet_zero_init_output_starts_at_identity_and_still_learns():
    model = PoseNet(18, zero_init_output=True)
    frame_a, frame_b = _images((2, 64, 96, 3), seed=3), _images((2, 64, 96, 3), seed=4)
    # Jitted: op by op, init + apply + grad of a ResNet-18 pair took 16 s of the default run.
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), frame_a, frame_b)
    out = variables["params"]["decoder"]["pose_2"]
    np.testing.assert_array_equal(out["kernel"], 0.0)
    np.testing.assert_array_equal(out["bias"], 0.0)
    # Same parameter tree as the reference init: checkpoints and converters do not care.
    reference = jax.eval_shape(functools.partial(PoseNet(18).init, train=False),
                               jax.random.key(0), frame_a, frame_b)
    assert jax.tree.structure(variables) == jax.tree.structure(reference)

    def translation_z(params):
        (_, translation), _ = model.apply(
            dict(variables, params=params), frame_a, frame_b, False
        )
        return jnp.sum(translation[:, 2])

    (axisangle, translation), _ = jax.jit(
        lambda v: model.apply(v, frame_a, frame_b, False))(variables)
    np.testing.assert_array_equal(axisangle, 0.0)
    np.testing.assert_array_equal(translation, 0.0)
    # The output conv still receives a gradient (its input features are not zero) ...
    grads = jax.jit(jax.grad(translation_z))(variables["params"])
    assert float(jnp.abs(grads["decoder"]["pose_2"]["kernel"]).max()) > 0.0
    # ... and nothing upstream of the zero conv does, until the conv has moved.
    assert float(jnp.abs(grads["decoder"]["pose_1"]["kernel"]).max()) == 0.0


# --- Bad input and name mapping. ------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="resnet.py.*num_layers"):
        encoder_channels(20)
    with pytest.raises(ValueError, match=r"resnet.py.*\[B, H, W, 6\]"):
        _abstract_init(ResNetEncoder(18, 2), jnp.zeros((1, 64, 64, 3)), train=False)
    with pytest.raises(ValueError, match="depth_decoder.py.*multiples of 32"):
        _abstract_init(DepthNet(18), jnp.zeros((1, 64, 80, 3)), train=False)
    with pytest.raises(ValueError, match="depth_decoder.py.*feature 4"):
        features = [jnp.zeros((1, 32, 32, c)) for c in encoder_channels(18)]
        _abstract_init(DepthDecoder(encoder_channels(18)), features[:4] + [features[4][..., :64]])
    with pytest.raises(ValueError, match="pose_net.py"):
        frames = jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 32, 3))
        _abstract_init(PoseNet(18), *frames, train=False)
    pose_decoder = PoseDecoder(encoder_channels(18))
    with pytest.raises(ValueError, match="pose_net.py.*num_input_features=1"):
        _abstract_init(pose_decoder, [jnp.zeros((1, 2, 3, 512))] * 2)
    with pytest.raises(ValueError, match=r"pose_net.py.*\[B, h, w, 512\]"):
        _abstract_init(pose_decoder, [jnp.zeros((1, 2, 3, 256))])


def test_decoder_torch_index_follows_reference_module_order():
    names = [f"upconv_{i}_{j}" for i in range(4, -1, -1) for j in (0, 1)]
    names += [f"dispconv_{s}" for s in (0, 1, 2, 3)]
    assert [decoder_torch_index(n) for n in names] == list(range(14))
    assert decoder_torch_index("dispconv_0", scales=(3, 0)) == 11
    with pytest.raises(ValueError, match="depth_decoder.py"):
        decoder_torch_index("squeeze")


# --- Parity with the PyTorch reference: tests/test_interop.py (exported weights loaded strictly
# into plain-torch reference networks, encoder features, disparities, poses, train-mode BatchNorm).


def test_max_pool_gradient_goes_to_the_first_maximum_like_torch():
    """The hand-written max-pool VJP routes each window's gradient to its first maximal element
    in row-major order (torch's rule), with ties and borders, and equals JAX's own gradient."""
    from flax import linen as nn

    rng = np.random.default_rng(0)
    x = jnp.asarray(np.round(rng.standard_normal((2, 9, 12, 3)) * 2) / 2, jnp.float32)  # ties
    weights = jnp.asarray(rng.standard_normal(max_pool_3x3_s2(x).shape), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(max_pool_3x3_s2(x) * weights))(x)
    reference = jax.grad(lambda x: jnp.sum(nn.max_pool(
        x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))) * weights))(x)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(reference), atol=1e-6)
    # Hand case: a 3x3 window of equal values sends everything to its top-left element.
    flat = jnp.ones((1, 3, 3, 1))
    hand = jax.grad(lambda x: jnp.sum(max_pool_3x3_s2(x)))(flat)[0, :, :, 0]
    # Outputs (0,0), (0,1), (1,0), (1,1) have windows starting at padded (0,0), (0,2), (2,0), (2,2):
    # their first in-image maxima are (0,0), (0,1), (1,0), (1,1).
    np.testing.assert_array_equal(np.asarray(hand), [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    torch = pytest.importorskip("torch")
    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)
    wt = torch.tensor(np.asarray(weights).transpose(0, 3, 1, 2).copy())
    (torch.nn.functional.max_pool2d(xt, 3, 2, 1) * wt).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy().transpose(0, 2, 3, 1), np.asarray(grad), atol=1e-6)
