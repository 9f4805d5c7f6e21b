"""ManyDepth with an HRNet-18 multi-frame network (jdepth/models/manydepth_hrnet.py), the
`model.depth_arch` / `model.mono_arch` switches, the panoptic plug-in inside the ManyDepth step
and configs/manydepth_plus{,_demo}.py.

Shapes and parameter counts go through `jax.eval_shape` (no compile); the jitted train steps
(HRNet multi-frame network; panoptic plug-in) are slow tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from conftest import load_config, random_batch
from jdepth.models.depth_decoder import DepthNet
from jdepth.models.diffnet_decoder import HRDepthNet
from jdepth.models.hrnet import HRNetEncoder
from jdepth.models.manydepth import ManyDepthNet
from jdepth.models.manydepth_hrnet import ManyDepthHRNet
from jdepth.training import manydepth, panoptic as panoptic_plugin, panoptic_config, plugins
from jdepth.training import parallel as parallel_lib
from jdepth.training.state import TrainState
from panoptic_helpers import fast_compiles, fill_like  # noqa: F401 (autouse fixture)

# HRNet-W18's encoder (stem, layer1, transitions, stages 2-4), as tests/test_hrnet.py pins it
# against timm, plus ManyDepth's reduce_conv: 3x3, (256 layer1 channels + 96 cost bins) -> 256,
# with bias: 9 * 352 * 256 + 256 = 811,264.
HRNET18_ENCODER_PARAMS = 9_562_260
REDUCE_CONV_PARAMS = 9 * (256 + 96) * 256 + 256
MANYDEPTH_HRNET_ENCODER_PARAMS = 10_373_524
# MSFF (jdepth/models/msff.py) on HRNet: fine_conv 3x3 64 -> 32 (18,464), two context convs
# 3x3 256 -> 32 (73,760 each), fuse_conv 1x1 (256 + 3 x 32) -> 256 (90,368).
MSFF_PARAMS = 256_352
# BatchNorm statistics: HRNet's only (reduce_conv and MSFF have no BatchNorm).
HRNET18_ENCODER_BN_STATS = 33_936
DIFFNET_DECODER_PARAMS = 1_306_840  # tests/test_hrnet.py

B, H, W = 2, 64, 192
_spec = jax.ShapeDtypeStruct
ARGS = (_spec((B, H, W, 3), jnp.float32), _spec((B, 1, H, W, 3), jnp.float32),
        _spec((B, 1, 4, 4), jnp.float32), _spec((B, 4, 4), jnp.float32),
        _spec((B, 4, 4), jnp.float32))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _abstract(net):
    variables = jax.eval_shape(
        lambda *a: net.init(jax.random.key(0), *a, 0.1, 10.0, train=False), *ARGS
    )
    outputs = jax.eval_shape(
        lambda v, *a: net.apply(v, *a, 0.1, 10.0, train=False), variables, *ARGS
    )
    return variables, outputs


# ----------------------------------------------------------------------------------- network
def test_encoder_parameter_count_is_hrnet18_plus_reduce_conv_and_msff():
    assert HRNET18_ENCODER_PARAMS + REDUCE_CONV_PARAMS == MANYDEPTH_HRNET_ENCODER_PARAMS
    hrnet = jax.eval_shape(
        lambda x: HRNetEncoder().init(jax.random.key(0), x, train=False), ARGS[0]
    )
    for msff, extra in ((False, 0), (True, MSFF_PARAMS)):
        variables, _ = _abstract(ManyDepthHRNet(msff=msff))
        encoder = variables["params"]["encoder"]
        assert _count(encoder) == MANYDEPTH_HRNET_ENCODER_PARAMS + extra
        assert _count(variables["batch_stats"]["encoder"]) == HRNET18_ENCODER_BN_STATS
        assert _count(variables["params"]["decoder"]) == DIFFNET_DECODER_PARAMS
        assert _count(encoder.get("msff", {})) == extra
        # Every HRNet variable keeps its single-frame path and shape (converted weights load),
        # the cost volume only adds reduce_conv (and msff).
        flat = traverse_util.flatten_dict(encoder)
        single = traverse_util.flatten_dict(hrnet["params"])
        assert {k: v.shape for k, v in flat.items() if k[0] not in ("reduce_conv", "msff")} == {
            k: v.shape for k, v in single.items()
        }
        assert encoder["reduce_conv"]["kernel"].shape == (3, 3, 256 + 96, 256)


def test_output_shapes_match_manydepthnet_at_64x192():
    _, (disps, aux) = _abstract(ManyDepthHRNet())
    _, (ref_disps, ref_aux) = _abstract(ManyDepthNet())
    assert {s: d.shape for s, d in disps.items()} == {
        s: (B, H >> s, W >> s, 1) for s in range(4)
    } == {s: d.shape for s, d in ref_disps.items()}
    assert aux["cost_volume"].shape == (B, H // 4, W // 4, 96)
    assert aux["lowest_cost_depth"].shape == aux["confidence"].shape == (B, H // 4, W // 4, 1)
    assert aux["bins"].shape == (96,)
    assert aux["matching_features"].shape == (B, H // 4, W // 4, 256)  # HRNet layer1 width
    # Panoptic head input: stem1 and the four stage-4 branches at strides 2..32.
    assert [f.shape for f in aux["encoder_features"]] == [
        (B, H >> s, W >> s, c) for s, c in zip(range(1, 6), (64, 18, 36, 72, 144))
    ]
    # Contrastive-loss input: the same decoder levels as the ResNet network.
    assert {i: f.shape for i, f in aux["decoder_features"].items()} == {
        i: f.shape for i, f in ref_aux["decoder_features"].items()
    }
    # Every key the ManyDepth step and evaluation read from the ResNet network is there.
    assert set(ref_aux) <= set(aux)


def test_msff_keeps_the_shapes():
    _, (disps, aux) = _abstract(ManyDepthHRNet(msff=True))
    assert aux["matching_features"].shape == (B, H // 4, W // 4, 256)
    assert disps[0].shape == (B, H, W, 1)


# ---------------------------------------------------------------------------------- switches
def _small_config(name="manydepth"):
    config = load_config(name)
    config.data.height, config.data.width = 64, 64
    config.train.batch_size = 2
    config.train.progress_bar = False
    config.model.num_depth_bins = 8
    config.train.steps_per_epoch = 10
    config.manydepth.freeze_teacher_step = 1
    return config


def test_depth_arch_switch_defaults_to_the_unchanged_resnet_network():
    config = load_config("manydepth")
    assert config.model.depth_arch == "resnet" and config.model.mono_arch == "resnet"
    networks = manydepth.build_networks(config)
    m = config.model
    # Exactly the module the recipe built before the switch existed (same attributes).
    assert networks["depth"] == ManyDepthNet(
        num_layers=m.num_layers, scales=tuple(m.scales), num_depth_bins=m.num_depth_bins,
        depth_binning=m.depth_binning, msff=m.msff, cost_volume_gradient=m.cost_volume_gradient,
        matching_border=m.matching_border, bins_per_chunk=m.bins_per_chunk, bn_axis_name=None,
        dtype=jnp.float32,
    )
    assert isinstance(networks["mono"], DepthNet) and "panoptic" not in networks
    del m.depth_arch  # configs written before the switch: still ResNet
    assert isinstance(manydepth.build_networks(config)["depth"], ManyDepthNet)

    config = load_config("manydepth")
    config.model.depth_arch = "hrnet"
    networks = manydepth.build_networks(config)
    assert isinstance(networks["depth"], ManyDepthHRNet)
    assert networks["depth"].num_depth_bins == 96 and networks["depth"].bins_per_chunk == 8
    assert isinstance(networks["mono"], DepthNet)  # the teacher follows mono_arch, not depth_arch
    config.model.mono_arch = "hrnet"
    assert isinstance(manydepth.build_networks(config)["mono"], HRDepthNet)
    config.model.depth_arch = "vgg"
    with pytest.raises(ValueError, match="depth_arch"):
        manydepth.build_networks(config)


def test_unsupported_options_are_refused_not_ignored():
    config = load_config("manydepth")
    config.piecewise.enabled = True  # runs in ManyDepth (tests/test_plugin_steps.py), with labels
    with pytest.raises(ValueError, match="load_panoptic"):
        plugins.pipeline_settings(config)
    config = load_config("manydepth")
    with config.model.unlocked():
        config.model.scale_head = True
    with pytest.raises(ValueError, match="scale head"):
        manydepth.build_networks(config)


def _flat(config) -> dict:
    return traverse_util.flatten_dict(config.to_dict(), sep=".")


def test_manydepth_plus_configs():
    plus = load_config("manydepth_plus")
    assert plus.recipe == "manydepth" and plus.model.depth_arch == "hrnet" and plus.model.msff
    assert plus.data.load_panoptic and plus.panoptic.enabled and plus.contrastive.enabled
    assert plus.piecewise.enabled and plus.masking.small_objects
    networks = manydepth.build_networks(plus)
    assert isinstance(networks["depth"], ManyDepthHRNet) and networks["depth"].msff
    assert panoptic_plugin.HEAD in networks
    # The demo variants differ only in the ManyDepth+ switches (same data, size, budget, freeze).
    base, demo = _flat(load_config("manydepth_demo")), _flat(load_config("manydepth_plus_demo"))
    assert set(base) == set(demo)
    assert {k for k in base if base[k] != demo[k]} == {
        "model.depth_arch", "model.msff", "data.load_panoptic", "panoptic.enabled",
        "contrastive.enabled", "piecewise.enabled", "masking.small_objects",
        "model.cost_volume_gradient",
        "manydepth.reset_optimizer_at_freeze",  # the paper's schedule
    }
    assert (demo["data.height"], demo["data.width"]) == (64, 192)
    with pytest.raises(ValueError, match="lookup frames"):
        panoptic_plugin.predict_panoptic({}, {}, jnp.zeros((1, 64, 192, 3)), networks=networks,
                                         config=plus)


# ------------------------------------------------------------------------------- train step
def _labels(frames: int) -> np.ndarray:
    """Sky over road, two touching cars (instances), a void corner; the second image mirrored."""
    ids = np.full((64, 64), 10, np.int32)
    ids[32:] = 0
    ids[20:44, 8:30], ids[24:48, 30:56] = 13001, 13002
    ids[:6, :6] = 255
    pair = np.stack([ids, ids[:, ::-1]])
    return np.broadcast_to(pair[:, None], (2, frames, 64, 64)).copy()


def _one_step(config, with_labels: bool):
    """One jitted ManyDepth step (SGD) from numpy-filled variables: (old state, new, metrics)."""
    networks = manydepth.build_networks(config)
    shapes = jax.eval_shape(
        functools.partial(manydepth.init_variables, networks, config), jax.random.PRNGKey(0)
    )
    params, batch_stats = fill_like(shapes)
    state = TrainState.create(params, batch_stats, optax.sgd(1e-3), manydepth.init_extra(config))
    batch = random_batch(config, 2, seed=0)
    if with_labels:
        batch["panoptic"] = _labels(len(config.data.frame_ids))
    step_fn = functools.partial(manydepth.train_step, networks=networks, config=config)
    dp = parallel_lib.DataParallel(step_fn, mode="jit", devices=jax.local_devices()[:1])
    new_state, metrics = dp.step(dp.put_state(state), dp.put_batch(batch), jax.random.PRNGKey(1))
    return state, dp.get_state(new_state), dp.metrics_to_host(metrics)


def _assert_trained(state, new_state, metrics, networks):
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert metrics["multi/loss"] > 0 and metrics["teacher/loss"] > 0
    # grad_norm covers every gradient (the step skips non-finite updates, so params alone would
    # not show them); with SGD a nonzero parameter change means a nonzero gradient.
    assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
    for net in networks:
        delta = [np.asarray(a) - np.asarray(b) for a, b in zip(
            jax.tree_util.tree_leaves(new_state.params[net]),
            jax.tree_util.tree_leaves(state.params[net]))]
        assert all(np.all(np.isfinite(d)) for d in delta), net
        assert any(np.any(d != 0) for d in delta), net  # every network gets a gradient


# Both compile programs of several GB on CPU (HRNet: ~300 convolutions, forward and backward,
# plus the ResNet teacher and pose passes of both phases). The HRNet one was OOM-killed after 23
# minutes of compiling on a 23 GB machine shared with two training runs: it is `heavy` (skipped
# by default, JDEPTH_HEAVY_TESTS=1 runs it) until it has been measured on a quiet machine.
@pytest.mark.heavy
def test_jitted_step_with_the_hrnet_network_is_finite():
    """ManyDepth with depth_arch='hrnet' + MSFF at 64x64 (matching 16x16, 8 bins)."""
    config = _small_config()
    config.model.depth_arch = "hrnet"
    config.model.msff = True
    state, new_state, metrics = _one_step(config, with_labels=False)
    _assert_trained(state, new_state, metrics, ("depth", "mono", "pose"))
    assert metrics["loss"] == pytest.approx(metrics["teacher/loss"] + metrics["multi/loss"],
                                            rel=1e-5)
    depth_delta = jax.tree_util.tree_map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        new_state.params["depth"], state.params["depth"])
    # The HRNet stages after the cost volume, reduce_conv and the MSFF fuse conv all learn.
    assert depth_delta["encoder"]["stage4_2"]["branch3_3"]["conv2"]["kernel"] > 0
    assert depth_delta["encoder"]["reduce_conv"]["kernel"] > 0
    assert depth_delta["encoder"]["msff"]["fuse_conv"]["kernel"] > 0


@pytest.mark.slow
def test_jitted_step_with_the_panoptic_plugin_is_finite():
    """The panoptic head + contrastive loss inside the ManyDepth step (ResNet network: the
    wiring is the same for both archs, and the ResNet program is the cheaper one to compile)."""
    config = _small_config()
    panoptic_config.enable(config)
    config.panoptic.update(dict(num_proposals=8, hidden_dim=16, agg_dim=8, ffn_dim=32,
                                num_heads=2, num_cls_fcs=1, num_mask_fcs=1, max_segments=6))
    state, new_state, metrics = _one_step(config, with_labels=True)
    assert set(state.params) == {"depth", "mono", "pose", "panoptic"}
    assert "panoptic" not in state.batch_stats  # GroupNorm head
    _assert_trained(state, new_state, metrics, ("depth", "mono", "pose", "panoptic"))
    assert metrics["panoptic"] == pytest.approx(0.35 * metrics["panoptic/unweighted"], rel=1e-6)
    assert metrics["contrastive"] == pytest.approx(
        0.1 * metrics["contrastive/unweighted"], rel=1e-6)
    assert metrics["loss"] == pytest.approx(
        metrics["teacher/loss"] + metrics["multi/loss"] + metrics["panoptic"]
        + metrics["contrastive"], rel=1e-5)
