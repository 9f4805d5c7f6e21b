"""Tests for jdepth/interop: weight conversion to and from PyTorch layouts, and numerical parity.

Without torch: exact round trips jdepth -> reference state dicts / files -> jdepth, key names and
layouts, ImageNet initialisation, the `model.encoder_init` hook, the tools. With torch
(tests/torch_reference.py: the reference architectures in plain torch.nn): exported weights load
strictly into the reference networks and give the same features, disparities and poses; ImageNet
weights imported into jdepth give torchvision's features; SSIM, the warp and the full photometric
objective match. Torch tests are SKIPPED, with the reason in the summary, without torch.
"""

from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest
from PIL import Image

import jax
import jax.numpy as jnp
from flax import traverse_util

from jdepth import geometry
from jdepth.interop import checkpoints, encoder_init, files, params_npz, torch_layout
from jdepth.losses import monodepth as monodepth_losses
from jdepth.losses.photometric import ssim_loss
from jdepth.models.depth_decoder import DepthNet
from jdepth.models.pose_net import PoseNet
from jdepth.models.resnet import ResNetEncoder
from jdepth.training import monodepth, recipes

from conftest import REPO, load_config, tiny_config

TORCH_MISSING = (
    "PyTorch is NOT installed, so the PyTorch parity tests are SKIPPED. Install the test extra "
    "(pip install -e '.[test]', which pins the CPU torch==2.13.0) to run them."
)
H, W = 64, 64  # smallest size whose deepest feature (1/32) is 2x2: the pose mean is non-trivial
EXTRAS = {"height": H, "width": W, "use_stereo": False}


pytestmark = pytest.mark.usefixtures("fast_compiles")


def _random_variables(model, *inputs, seed, **static):
    """Variables of `model` filled by numpy (He-scaled kernels, non-trivial BN statistics);
    flax's own initialisers would take ~15 s to compile for two ResNets."""
    rng = np.random.default_rng(seed)
    fills = {
        "kernel": lambda s: rng.normal(0.0, np.sqrt(2.0 / np.prod(s[:-1])), s),
        "bias": lambda s: rng.normal(0.0, 0.1, s),
        "scale": lambda s: rng.uniform(0.8, 1.2, s),
        "mean": lambda s: rng.normal(0.0, 0.1, s),
        "var": lambda s: rng.uniform(0.5, 1.5, s),
    }
    shapes = jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a, **static), *inputs)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: np.asarray(fills[path[-1].key](leaf.shape), np.float32), shapes
    )


_IMAGE = jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
_DEPTHNET, _POSENET = DepthNet(18), PoseNet(18)


@pytest.fixture(scope="module")
def variables():
    """{params, batch_stats} keyed by network, as the recipe holds them."""
    depth = _random_variables(_DEPTHNET, _IMAGE, train=False, seed=0)
    pose = _random_variables(_POSENET, _IMAGE, _IMAGE, train=False, seed=1)
    return {
        "params": {"depth": depth["params"], "pose": pose["params"]},
        "batch_stats": {"depth": depth["batch_stats"], "pose": pose["batch_stats"]},
    }


def _assert_trees_identical(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert set(flat_a) == set(flat_b)
    for key, value in flat_a.items():
        other = np.asarray(flat_b[key])
        assert other.dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(other, value, err_msg="/".join(key))


# --- Layouts and exact round trips (numpy only). --------------------------------------------------


def test_kernel_layout_is_hwio_to_oihw():
    kernel = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # [kh, kw, in, out]
    weight = torch_layout.kernel_to_torch(kernel)
    assert weight.shape == (5, 4, 2, 3) and weight.flags.c_contiguous
    assert weight[4, 1, 0, 2] == kernel[0, 2, 1, 4]  # weight[out, in, y, x] = kernel[y, x, in, out]
    np.testing.assert_array_equal(torch_layout.kernel_from_torch(weight), kernel)


def test_monodepth2_folder_names_shapes_and_exact_round_trip(variables):
    params, stats = variables["params"], variables["batch_stats"]
    folder = checkpoints.to_torch(params, stats, EXTRAS)
    assert sorted(folder) == ["depth", "encoder", "pose", "pose_encoder"]
    enc, depth, pose_enc, pose = (folder[k] for k in ("encoder", "depth", "pose_encoder", "pose"))
    # Encoder: torchvision keys under `encoder.`, BN statistics, zero classifier, the extras.
    assert list(enc)[:6] == ["encoder.conv1.weight"] + [
        f"encoder.bn1.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked")]
    assert enc["encoder.conv1.weight"].shape == (64, 3, 7, 7)
    np.testing.assert_array_equal(enc["encoder.layer3.0.downsample.1.running_var"],
                                  stats["depth"]["encoder"]["layer3_0"]["downsample_bn"]["var"])
    assert enc["encoder.fc.weight"].shape == (1000, 512) and not enc["encoder.fc.weight"].any()
    assert {k: enc[k] for k in EXTRAS} == EXTRAS
    # Decoder convs in the reference's creation order: the input channels pin each index.
    in_channels = {k: v.shape[1] for k, v in depth.items() if k.endswith("weight")}
    assert in_channels["decoder.0.conv.conv.weight"] == 512  # upconv_4_0
    assert in_channels["decoder.1.conv.conv.weight"] == 256 + 256  # upconv_4_1 with skip
    assert in_channels["decoder.9.conv.conv.weight"] == 16  # upconv_0_1, no skip
    assert [in_channels[f"decoder.{10 + s}.conv.weight"] for s in range(4)] == [16, 32, 64, 128]
    # Pose: a 6-channel conv1 and net.0..3 with 12 outputs.
    assert pose_enc["encoder.conv1.weight"].shape == (64, 6, 7, 7)
    assert {k: v.shape for k, v in pose.items() if k.endswith("weight")} == {
        "net.0.weight": (256, 512, 1, 1), "net.1.weight": (256, 256, 3, 3),
        "net.2.weight": (256, 256, 3, 3), "net.3.weight": (12, 256, 1, 1)}

    back_params, back_stats, extras = checkpoints.from_torch(folder)
    _assert_trees_identical(back_params, params)
    _assert_trees_identical(back_stats, stats)
    assert extras == EXTRAS  # (through files on disk: test_import_predict_export_tools)


def test_resnet50_encoder_round_trip():
    shapes = _random_variables(ResNetEncoder(50), _IMAGE, train=False, seed=2)
    state = torch_layout.encoder_to_torch(shapes["params"], shapes["batch_stats"])
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert checkpoints.resnet_depth(shapes["params"]) == 50
    params, stats = torch_layout.encoder_from_torch(state)
    _assert_trees_identical(params, shapes["params"])
    _assert_trees_identical(stats, shapes["batch_stats"])


def test_manydepth_folder_round_trip_keeps_extras(variables, tmp_path):
    rng = np.random.default_rng(3)
    params = jax.tree_util.tree_map(np.copy, variables["params"])
    params["mono"] = jax.tree_util.tree_map(np.copy, variables["params"]["depth"])
    params["depth"]["encoder"]["reduce_conv"] = {
        "kernel": rng.normal(size=(3, 3, 64 + 96, 64)).astype(np.float32),
        "bias": rng.normal(size=64).astype(np.float32)}
    stats = {**variables["batch_stats"], "mono": variables["batch_stats"]["depth"]}
    extras = {"height": H, "width": 96, "min_depth_bin": 0.123456789, "max_depth_bin": 19.5}

    folder = checkpoints.to_torch(params, stats, extras)
    assert sorted(folder) == sorted(checkpoints.MANYDEPTH_FILES)
    enc = folder["encoder"]
    assert enc["layer0.0.weight"].shape == (64, 3, 7, 7) and "layer0.1.running_var" in enc
    assert "layer1.1.0.conv1.weight" in enc and "layer2.0.downsample.1.weight" in enc
    assert enc["reduce_conv.0.weight"].shape == (64, 160, 3, 3)
    assert enc["prematching_conv.0.weight"].shape == (16, 64, 1, 1)  # zeros: never used
    # BackprojectDepth buffers at 1/4 resolution for 96 bins: pixel (x, y, 1) columns.
    pix = enc["backprojector.pix_coords"]
    assert pix.shape == (96, 3, 16 * 24) and tuple(pix[5, :, 24 + 3]) == (3.0, 1.0, 1.0)
    assert {k: enc[k] for k in extras} == extras
    assert folder["mono_encoder"]["encoder.conv1.weight"].shape == (64, 3, 7, 7)

    files.save_checkpoint_dir(str(tmp_path), folder, ext=".npz")
    loaded = files.load_checkpoint_dir(str(tmp_path), checkpoints.MANYDEPTH_FILES)
    back_params, back_stats, back_extras = checkpoints.from_torch(loaded)
    _assert_trees_identical(back_params, params)
    _assert_trees_identical(back_stats, stats)
    assert back_extras == extras


def test_params_npz_documented_names_and_exact_round_trip(variables, tmp_path):
    path = str(tmp_path / "params.npz")
    config = {"model": {"num_layers": 18}}
    params_npz.save(path, variables["params"], variables["batch_stats"], config=config,
                    extras=EXTRAS)
    with np.load(path) as data:
        assert data["params/depth/encoder/conv1/kernel"].shape == (7, 7, 3, 64)
        assert data["params/depth/decoder/upconv_0_1/conv/conv/kernel"].shape == (3, 3, 16, 16)
        assert data["batch_stats/pose/encoder/layer4_1/bn2/var"].shape == (512,)
        assert data["params/pose/decoder/pose_2/bias"].shape == (12,)
    params, stats, meta = params_npz.load(path)
    _assert_trees_identical(params, variables["params"])
    _assert_trees_identical(stats, variables["batch_stats"])
    assert meta == {"format": params_npz.FORMAT, "config": config, "extras": EXTRAS}


def test_strict_import_names_the_offending_key(variables):
    enc = checkpoints.to_torch(variables["params"], variables["batch_stats"], EXTRAS)["encoder"]
    with pytest.raises(ValueError, match="layer5"):
        checkpoints.resnet_encoder_from_torch({**enc, "encoder.layer5.0.conv1.weight": 0})
    with pytest.raises(ValueError, match="decoder.14"):
        torch_layout.depth_decoder_from_torch({"decoder.14.conv.conv.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="net.4"):
        torch_layout.pose_decoder_from_torch({"net.4.weight": np.zeros((1, 1, 1, 1))})


# --- ImageNet initialisation and the `model.encoder_init` hook. -----------------------------------


def _imagenet_state(variables, seed=4):
    """A torchvision-layout ResNet-18 state dict (random values, classifier included)."""
    rng = np.random.default_rng(seed)
    noisy = jax.tree_util.tree_map(
        lambda x: (x + rng.normal(0, 0.01, x.shape)).astype(np.float32), variables)
    state = torch_layout.encoder_to_torch(noisy["params"]["depth"]["encoder"],
                                          noisy["batch_stats"]["depth"]["encoder"])
    return {**state, **torch_layout.classifier_zeros(512)}


def test_imagenet_init_fills_encoders_and_stacks_pose_conv1(variables):
    state = _imagenet_state(variables)
    before = jax.tree_util.tree_map(np.copy, variables["params"])
    params, stats = encoder_init.imagenet_encoders(variables["params"], variables["batch_stats"],
                                                   state)
    expected, expected_stats = torch_layout.encoder_from_torch(state)
    _assert_trees_identical(params["depth"]["encoder"], expected)
    _assert_trees_identical(stats["depth"]["encoder"], expected_stats)
    pose_conv1 = params["pose"]["encoder"]["conv1"]["kernel"]
    imagenet_conv1 = expected["conv1"]["kernel"]
    np.testing.assert_array_equal(pose_conv1[:, :, :3], imagenet_conv1 / 2)
    np.testing.assert_array_equal(pose_conv1[:, :, 3:], imagenet_conv1 / 2)
    # Why halved: a pair of identical frames gives the ImageNet conv1 response exactly.
    np.testing.assert_allclose(pose_conv1[:, :, :3] + pose_conv1[:, :, 3:], imagenet_conv1)
    pose_rest = {k: v for k, v in params["pose"]["encoder"].items() if k != "conv1"}
    _assert_trees_identical(pose_rest, {k: v for k, v in expected.items() if k != "conv1"})
    # Decoders keep their initialisation; the inputs are not modified.
    for network in ("depth", "pose"):
        _assert_trees_identical(params[network]["decoder"], variables["params"][network]["decoder"])
    _assert_trees_identical(variables["params"], before)

    r50 = _random_variables(ResNetEncoder(50), _IMAGE, train=False, seed=5)
    with pytest.raises(ValueError, match="depth/encoder"):
        encoder_init.imagenet_encoders(
            variables["params"], variables["batch_stats"],
            torch_layout.encoder_to_torch(r50["params"], r50["batch_stats"]))


def test_encoder_init_config_hook(variables, tmp_path):
    path = str(tmp_path / "resnet18.npz")
    files.save_state_dict(path, _imagenet_state(variables))
    config = tiny_config(H, W)
    assert config.model.encoder_init == "scratch"
    # Stand-ins whose `init` returns the fixture's variables at once (no 15 s of compiling).
    networks = {n: types.SimpleNamespace(init=lambda *a, n=n, **k: _net_vars(variables, n))
                for n in ("depth", "pose")}
    params, stats = monodepth.init_variables(networks, config, jax.random.key(0))
    _assert_trees_identical(params, variables["params"])  # scratch: untouched

    config.model.encoder_init = f"imagenet:{path}"
    params, stats = monodepth.init_variables(networks, config, jax.random.key(0))
    expected, _ = torch_layout.encoder_from_torch(files.load_state_dict(path))
    _assert_trees_identical(params["depth"]["encoder"], expected)
    assert params["pose"]["encoder"]["conv1"]["kernel"].shape == (7, 7, 6, 64)

    # A converted model ("params:"): every network in the file replaces the initial one.
    npz = str(tmp_path / "params.npz")
    params_npz.save(npz, {"pose": params["pose"]}, {"pose": stats["pose"]})
    config.model.encoder_init = f"params:{npz}"
    got, _ = monodepth.init_variables(networks, config, jax.random.key(0))
    _assert_trees_identical(got["pose"], params["pose"])
    _assert_trees_identical(got["depth"], variables["params"]["depth"])

    # Restore targets are built abstractly: the file is not read (and need not exist there).
    config.model.encoder_init = "imagenet:/nonexistent/resnet18.npz"
    abstract = recipes.abstract_state_tree(config)
    assert abstract["params"]["pose"]["encoder"]["conv1"]["kernel"].shape == (7, 7, 6, 64)
    with pytest.raises(ValueError, match="encoder_init"):
        encoder_init.parse("imagenet")
    with pytest.raises(FileNotFoundError):
        monodepth.init_variables(networks, config, jax.random.key(0))


def test_params_file_starts_every_manydepth_network(variables, tmp_path):
    """ManyDepth builds its single-frame teacher and pose net as Monodepth2 does; a params file
    (fine-tuning, tools/make_start.py) must reach those AND the multi-frame net, keyed as the
    recipe's own params."""
    config = load_config("manydepth")
    config.data.height, config.data.width = H, W
    # Stand-ins whose `init` returns fixed variables at once (the real nets: 30 s of eager init).
    multi = {"params": {"encoder": {"conv1": {"kernel": np.zeros((3, 3, 3, 4), np.float32)},
                                    "cost_reduce": {"kernel": np.zeros((1, 1, 8, 4), np.float32)}}},
             "batch_stats": {"encoder": {"bn1": {"mean": np.zeros(4, np.float32)}}}}
    networks = {"mono": types.SimpleNamespace(init=lambda *a, **k: _net_vars(variables, "depth")),
                "pose": types.SimpleNamespace(init=lambda *a, **k: _net_vars(variables, "pose")),
                "depth": types.SimpleNamespace(init=lambda *a, **k: multi)}
    recipe = recipes.get("manydepth")
    params, stats = recipe.init_variables(networks, config, jax.random.key(0))
    _assert_trees_identical(params["mono"], variables["params"]["depth"])
    start = {"mono": jax.tree_util.tree_map(lambda x: x + 1.0, params["mono"]),
             "depth": {"encoder": {"conv1": {"kernel": np.full((3, 3, 3, 4), 2.0, np.float32)}}}}
    npz = str(tmp_path / "start.npz")
    params_npz.save(npz, start, {"depth": {"encoder": {"bn1": {"mean": np.ones(4, np.float32)}}}})
    config.model.encoder_init = f"params:{npz}"
    got, got_stats = recipe.init_variables(networks, config, jax.random.key(0))
    _assert_trees_identical(got["mono"], start["mono"])
    _assert_trees_identical(got["depth"]["encoder"]["conv1"], start["depth"]["encoder"]["conv1"])
    _assert_trees_identical(got["depth"]["encoder"]["cost_reduce"],  # not in the file: initial
                            multi["params"]["encoder"]["cost_reduce"])
    _assert_trees_identical(got["pose"], params["pose"])
    np.testing.assert_array_equal(got_stats["depth"]["encoder"]["bn1"]["mean"], np.ones(4))
    _assert_trees_identical(got_stats["mono"], stats["mono"])


# --- Parity with the reference PyTorch networks. --------------------------------------------------

_depth_eval = jax.jit(lambda v, x: _DEPTHNET.apply(v, x, False))
_depth_train = jax.jit(lambda v, x: _DEPTHNET.apply(v, x, True, mutable=["batch_stats"]))
_pose_eval = jax.jit(lambda v, a, b: _POSENET.apply(v, a, b, False))


def _net_vars(variables, network):
    return {c: variables[c][network] for c in ("params", "batch_stats")}


@pytest.fixture(scope="module")
def ref():
    """tests/torch_reference.py, or a loud skip of the test when torch is missing."""
    pytest.importorskip("torch", reason=TORCH_MISSING)
    import torch_reference

    return torch_reference


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(6)
    return [rng.uniform(0, 1, (2, H, W, 3)).astype(np.float32) for _ in range(2)]


def test_reference_resnet_has_torchvision_layout(ref):
    for depth, expected in ((18, ref.RESNET18_PARAMETERS), (50, ref.RESNET50_PARAMETERS)):
        assert sum(p.numel() for p in ref.ResNet(depth).parameters()) == expected


def test_exported_depthnet_matches_reference(ref, variables, images):
    folder = checkpoints.to_torch(variables["params"], variables["batch_stats"], EXTRAS)
    encoder = ref.load_strict(ref.ResnetEncoder(18), folder["encoder"])
    decoder = ref.load_strict(ref.DepthDecoder((64, 64, 128, 256, 512)), folder["depth"])
    image = images[0]
    disps, aux = _depth_eval(_net_vars(variables, "depth"), image)
    with ref.torch.no_grad():
        t_features = encoder(ref.nchw(image))
        t_disps = decoder(t_features)
    for t_f, f in zip(t_features, aux["encoder_features"]):
        ref.assert_close_nhwc(t_f, f, 1e-4)
    assert sorted(t_disps) == sorted(disps) == [0, 1, 2, 3]
    for s in range(4):
        ref.assert_close_nhwc(t_disps[s], disps[s], 1e-4)

    # Train mode: batch statistics in the forward pass, running statistics updated (both with
    # the unbiased batch variance).
    (disps, _), updates = _depth_train(_net_vars(variables, "depth"), image)
    t_disps = decoder(encoder.train()(ref.nchw(image)))
    for s in range(4):
        ref.assert_close_nhwc(t_disps[s], disps[s], 1e-3)
    new = checkpoints.resnet_encoder_to_torch(
        variables["params"]["depth"]["encoder"], updates["batch_stats"]["encoder"])
    t_state = encoder.state_dict()
    for key in (k for k in new if k.endswith(("running_mean", "running_var"))):
        old = folder["encoder"][key]
        np.testing.assert_allclose(t_state[key].numpy() - 0.9 * old, new[key] - 0.9 * old,
                                   rtol=2e-3, atol=1e-5, err_msg=key)


def test_exported_posenet_matches_reference(ref, variables, images):
    folder = checkpoints.to_torch(variables["params"], variables["batch_stats"], EXTRAS)
    encoder = ref.load_strict(ref.ResnetEncoder(18, num_input_images=2), folder["pose_encoder"])
    decoder = ref.load_strict(ref.PoseDecoder((64, 64, 128, 256, 512)), folder["pose"])
    _, aux = _pose_eval(_net_vars(variables, "pose"), *images)
    with ref.torch.no_grad():
        axisangle, translation = decoder(encoder(ref.torch.cat([ref.nchw(i) for i in images], 1)))
    six = np.concatenate([aux["axisangle"], aux["translation"]], -1)  # [B, 2 frames, 6]
    t_six = ref.torch.cat([axisangle, translation], -1)[:, :, 0].numpy()
    assert t_six.shape == six.shape == (2, 2, 6) and np.abs(six).max() > 1e-3
    np.testing.assert_allclose(t_six, six, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [18, 50])
def test_imagenet_weights_give_torchvision_features(ref, depth, images):
    """A torchvision state dict through `encoder_init` gives the reference encoders' features,
    for the depth encoder and for the pose encoder's stacked-and-halved conv1."""
    state = {k: v.numpy() for k, v in ref.randomised_resnet(depth, seed=depth).state_dict().items()}
    models = {"depth": ResNetEncoder(depth, 1), "pose": ResNetEncoder(depth, 2)}
    initial = {
        name: _random_variables(
            m, jax.ShapeDtypeStruct((1, 32, 32, 3 * m.num_input_images), jnp.float32),
            train=False, seed=7)
        for name, m in models.items()
    }
    params, stats = encoder_init.imagenet_encoders(
        {n: {"encoder": v["params"]} for n, v in initial.items()},
        {n: {"encoder": v["batch_stats"]} for n, v in initial.items()}, state)
    image = images[0][:, :32, :32]
    pair = np.concatenate([image, images[1][:, :32, :32]], -1)
    # The stacked conv1 is depth-independent: ResNet-50 checks the depth encoder only (compiles).
    cases = (("depth", image), ("pose", pair)) if depth == 18 else (("depth", image),)
    for name, x in cases:
        v = {"params": params[name]["encoder"], "batch_stats": stats[name]["encoder"]}
        features, _ = jax.jit(lambda v, x, m=models[name]: m.apply(v, x, False))(v, x)
        reference = ref.ResnetEncoder(depth, num_input_images=x.shape[-1] // 3)
        ref.load_strict(reference.encoder, torch_layout.stack_conv1(state, x.shape[-1] // 3))
        with ref.torch.no_grad():
            t_features = reference.eval()(ref.nchw(x))
        for t_f, f in zip(t_features, features):
            ref.assert_close_nhwc(t_f, f, 1e-4)


def test_pth_files_round_trip(ref, variables, tmp_path):
    folder = checkpoints.to_torch(variables["params"], variables["batch_stats"], EXTRAS)
    files.save_checkpoint_dir(str(tmp_path), folder, ext=".pth")
    raw = ref.torch.load(tmp_path / "encoder.pth", weights_only=True)
    assert raw["height"] == H and raw["encoder.bn1.num_batches_tracked"].dtype == ref.torch.int64
    loaded = files.load_checkpoint_dir(str(tmp_path), checkpoints.MONODEPTH2_FILES)
    params, stats, extras = checkpoints.from_torch(loaded)
    _assert_trees_identical(params, variables["params"])
    _assert_trees_identical(stats, variables["batch_stats"])
    assert extras == EXTRAS


# --- SSIM, warp and photometric loss against the reference conventions. ---------------------------


def _scene(seed=8, b=2, h=24, w=32):
    """Smooth images, KITTI-like intrinsics and small motions with rotation, at a tiny size."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (b, h // 4, w // 4, 3))
    images = [np.asarray(jax.image.resize(base + rng.normal(0, 0.05, base.shape), (b, h, w, 3),
                                          "linear"), np.float32).clip(0, 1) for _ in range(3)]
    K = np.array([[0.58 * w, 0, w / 2, 0], [0, 1.92 * h, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                 np.float32)
    K = np.broadcast_to(K, (b, 4, 4)).copy()
    poses = [np.asarray(geometry.transformation_from_parameters(
        jnp.asarray(rng.normal(0, 0.02, (b, 3)), jnp.float32),
        jnp.asarray(rng.normal(0, 0.2, (b, 3)), jnp.float32), invert=invert))
        for invert in (True, False)]
    return images[0], images[1:], poses, K, np.linalg.inv(K).astype(np.float32)


def test_ssim_and_warp_match_reference(ref):
    target, sources, poses, K, inv_K = _scene()
    # Textured images: on smooth ones float32 rounding of E[x^2] - E[x]^2 alone differs by ~1e-4
    # between any two summation orders (the formulas agree to 1e-13 in float64).
    x, y = np.random.default_rng(11).uniform(0, 1, (2,) + target.shape).astype(np.float32)
    ref.assert_close_nhwc(ref.ssim_loss(ref.nchw(x), ref.nchw(y)), jax.jit(ssim_loss)(x, y), 1e-5)
    depth = np.random.default_rng(9).uniform(1.0, 20.0, target.shape[:3] + (1,)).astype(np.float32)
    warped, pix = jax.jit(geometry.inverse_warp)(sources[0], depth, poses[0], K, inv_K)
    outside = (pix < 0) | (pix > np.array([target.shape[2] - 1, target.shape[1] - 1]))
    assert 0.02 < float(np.mean(np.any(outside, -1))) < 0.9  # the border padding is exercised
    t_warped = ref.warp(ref.nchw(sources[0]), ref.nchw(depth),
                        *(ref.tensor(m) for m in (poses[0], K, inv_K)))
    ref.assert_close_nhwc(t_warped, warped, 1e-5)


def test_photometric_objective_matches_reference(ref):
    """Full-res multiscale min reprojection + automask (no tie noise) + smoothness, 4 scales."""
    target, sources, poses, K, inv_K = _scene()
    rng = np.random.default_rng(10)
    b, h, w, _ = target.shape
    disps = {s: rng.uniform(0.01, 0.3, (b, h // 2**s, w // 2**s, 1)).astype(np.float32)
             for s in range(4)}
    pyramid = {s: np.asarray(jax.image.resize(target, (b, h // 2**s, w // 2**s, 3), "linear"))
               for s in range(4)}
    objective = jax.jit(lambda *args: monodepth_losses.monodepth_loss(*args, key=None)[0])
    total = objective(disps, target, {-1: sources[0], 1: sources[1]},
                      {-1: poses[0], 1: poses[1]}, K, inv_K, pyramid)
    t_total = ref.monodepth2_loss(
        {s: ref.nchw(d) for s, d in disps.items()}, ref.nchw(target),
        [ref.nchw(s) for s in sources], [ref.tensor(p) for p in poses], ref.tensor(K),
        ref.tensor(inv_K), {s: ref.nchw(p) for s, p in pyramid.items()})
    assert abs(float(t_total) - float(total)) <= 1e-5 * max(1.0, abs(float(total)))


# --- The command-line tools, end to end on tiny data. ---------------------------------------------


def _tool(name):
    path = REPO / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_predict_export_tools(variables, tmp_path):
    """Reference folder -> jdepth workdir -> depth PNG/npy -> reference folder again, exactly."""
    folder = checkpoints.to_torch(variables["params"], variables["batch_stats"], EXTRAS)
    files.save_checkpoint_dir(str(tmp_path / "ref"), folder, ext=".npz")
    workdir, npz = str(tmp_path / "run"), str(tmp_path / "md2.npz")
    assert _tool("import_torch").main(["--torch_dir", str(tmp_path / "ref"), "--workdir", workdir,
                                       "--npz", npz]) == 0

    rng = np.random.default_rng(12)
    inputs = tmp_path / "images" / "drive"
    inputs.mkdir(parents=True)
    for name, size in (("a.png", (50, 80)), ("b.jpg", (64, 64))):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(inputs / name)
    out = tmp_path / "out"
    assert _tool("predict").main([str(tmp_path / "images"), "--workdir", workdir,
                                  "--output_dir", str(out), "--batch_size", "2"]) == 0
    depth = np.load(out / "drive" / "a_depth.npy")
    assert depth.shape == (50, 80) and 0.1 <= depth.min() <= depth.max() <= 100.0
    png = np.asarray(Image.open(out / "drive" / "a_depth.png"))
    assert png.dtype == np.uint16
    np.testing.assert_allclose(png / 256.0, depth, atol=0.5 / 256 + 1e-6)
    assert np.asarray(Image.open(out / "drive" / "b_disp.png")).shape == (64, 64, 3)

    assert _tool("export_params").main(["--workdir", workdir, "--format", "npz", "--torch_dir",
                                        str(tmp_path / "again"), "--npz", str(tmp_path / "p.npz")]
                                       ) == 0
    again = files.load_checkpoint_dir(str(tmp_path / "again"), checkpoints.MONODEPTH2_FILES)
    assert set(again) == set(folder)
    for name, state in folder.items():
        assert set(again[name]) == set(state), name
        for key, value in state.items():
            np.testing.assert_array_equal(again[name][key], value, err_msg=f"{name}: {key}")
    params, _, meta = params_npz.load(str(tmp_path / "p.npz"))
    _assert_trees_identical(params, variables["params"])
    assert meta["config"]["data"]["height"] == H and meta["extras"]["width"] == W
