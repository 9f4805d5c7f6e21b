"""Metric output parametrisation (jdepth/training/metric_init.py): initial depth and translation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from panoptic_helpers import fast_compiles  # noqa: F401 (autouse fixture)

from jdepth import geometry
from jdepth.models.depth_decoder import DepthDecoder
from jdepth.models.pose_net import POSE_SCALE, PoseDecoder
from jdepth.training import metric_init, monodepth, recipes


@pytest.mark.parametrize("depth", [0.5, 10.0, 20.0, 80.0])
def test_disparity_logit_maps_to_the_depth_through_disp_to_depth(depth):
    logit = metric_init.disparity_logit(depth, 0.1, 100.0)
    _, got = geometry.disp_to_depth(jax.nn.sigmoid(jnp.float32(logit)), 0.1, 100.0)
    assert float(got) == pytest.approx(depth, rel=1e-5)


def test_disparity_logit_reference_value_and_range_check():
    # depth 10 in [0.1, 100]: p = (0.1 - 0.01) / (10 - 0.01), logit = log(p / (1 - p)).
    p = 0.09 / 9.99
    assert metric_init.disparity_logit(10.0, 0.1, 100.0) == pytest.approx(np.log(p / (1 - p)))
    for bad in (0.1, 100.0, -1.0):
        with pytest.raises(ValueError, match="init_depth"):
            metric_init.disparity_logit(bad, 0.1, 100.0)


def _decoder_params():
    decoder = DepthDecoder(num_ch_enc=(8, 8, 16, 16, 32))
    features = [jnp.asarray(np.random.default_rng(s).normal(size=(1, 64 // 2**s, 64 // 2**s, c)),
                            jnp.float32) for s, c in enumerate((8, 8, 16, 16, 32), start=1)]
    params = jax.jit(decoder.init)(jax.random.PRNGKey(0), features)["params"]
    return jax.jit(decoder.apply), features, params


def test_set_initial_depth_sets_only_the_disparity_biases_and_the_depth_follows():
    decoder, features, params = _decoder_params()
    new = metric_init.apply({"depth": params, "pose": {"bias": jnp.zeros(3)}},
                            _config(init_depth=10.0))
    logit = metric_init.disparity_logit(10.0, 0.1, 100.0)
    changed = []
    for (path, old), (_, leaf) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                      jax.tree_util.tree_flatten_with_path(new["depth"])[0]):
        name = "/".join(p.key for p in path)
        if "dispconv_" in name and name.endswith("bias"):
            np.testing.assert_allclose(leaf, logit, rtol=1e-6)
            changed.append(name)
        else:
            np.testing.assert_array_equal(leaf, old)
    assert len(changed) == 4  # one head per scale
    np.testing.assert_array_equal(new["pose"]["bias"], 0.0)  # other networks untouched
    # Median initial depth, random kernels included, is near the target (reference: ~0.2 m).
    disps, _ = decoder({"params": new["depth"]}, features)
    _, depth = geometry.disp_to_depth(disps[0], 0.1, 100.0)
    assert 5.0 < float(jnp.median(depth)) < 20.0
    disps, _ = decoder({"params": params}, features)
    assert float(jnp.median(geometry.disp_to_depth(disps[0], 0.1, 100.0)[1])) < 0.5


def _config(init_depth: float):
    config = load_config("monodepth2")
    config.model.init_depth = init_depth
    return config


def test_zero_init_depth_changes_nothing_and_a_tree_without_heads_raises():
    params = {"depth": {"conv": {"bias": jnp.ones(2)}}}
    assert metric_init.apply(params, _config(0.0)) is params
    with pytest.raises(ValueError, match="dispconv"):
        metric_init.apply(params, _config(10.0))


def test_recipe_inits_apply_it_to_every_depth_network(monkeypatch):
    calls = []

    def spy(params, config, networks=("depth",)):
        calls.append((sorted(params), networks))
        return original(params, config, networks)

    original = metric_init.apply
    monkeypatch.setattr(metric_init, "apply", spy)
    for name in ("demo", "manydepth_demo"):
        config = load_config(name)
        config.model.init_depth = 20.0
        recipes.abstract_state_tree(config)  # traces init_variables (shapes only)
    # Monodepth2: its depth net. ManyDepth: the mono teacher (inside the Monodepth2 init) and
    # the multi-frame net.
    assert calls == [(["depth", "pose"], ("depth",)), (["depth", "pose"], ("depth",)),
                     (["depth", "mono", "pose"], ("depth",))]
    config = load_config("demo")
    assert monodepth.build_networks(config)["pose"].translation_scale == POSE_SCALE
    config.model.pose_translation_scale = 1.0
    assert monodepth.build_networks(config)["pose"].translation_scale == 1.0


def test_translation_scale_scales_the_translation_only():
    features = [jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 3, 16)), jnp.float32)]
    reference = PoseDecoder(num_ch_enc=(16,))
    params = reference.init(jax.random.PRNGKey(0), features)
    rot_ref, trans_ref = reference.apply(params, features)
    rot, trans = PoseDecoder(num_ch_enc=(16,), translation_scale=1.0).apply(params, features)
    np.testing.assert_array_equal(rot, rot_ref)
    np.testing.assert_allclose(trans, trans_ref / POSE_SCALE, rtol=1e-5)
    assert float(jnp.max(jnp.abs(trans_ref))) > 0
