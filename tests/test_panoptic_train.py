"""The panoptic plug-in inside the jitted Monodepth2 train step (jdepth/training/panoptic.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config, random_batch, tiny_config
from panoptic_helpers import fast_compiles, fill_like  # noqa: F401 (autouse fixture)
from parity_helpers import max_diff, one_vs_two_devices

from jdepth.training import monodepth, panoptic_config, recipes
from jdepth.training import panoptic as panoptic_plugin
from jdepth.training import parallel as parallel_lib
from jdepth.training.state import TrainState

H = W = 64


def _config():
    config = tiny_config(height=H, width=W, batch_size=2)
    panoptic_config.enable(config)
    config.panoptic.update(dict(num_proposals=8, hidden_dim=16, agg_dim=8, ffn_dim=32,
                                num_heads=2, num_cls_fcs=1, num_mask_fcs=1, max_segments=6))
    config.train.steps_per_epoch = 10
    return config


def _labels(batch_size: int, frames: int) -> np.ndarray:
    """Sky over road, two touching cars, a void corner; the second image mirrored."""
    ids = np.full((H, W), 10, np.int32)
    ids[H // 2:] = 0
    ids[20:44, 8:30], ids[24:48, 30:56] = 13001, 13002
    ids[:6, :6] = 255
    pair = np.stack([ids, ids[:, ::-1]])
    return np.broadcast_to(pair[:batch_size, None], (batch_size, frames, H, W)).copy()


def test_configs_switch_the_plugin_on():
    base, variant = load_config("monodepth2"), load_config("monodepth2_panoptic")
    assert not panoptic_plugin.is_enabled(base) and not base.data.load_panoptic
    assert variant.data.load_panoptic and variant.panoptic.enabled and variant.contrastive.enabled
    assert variant.panoptic.weight == 0.35 and variant.panoptic.num_proposals == 100
    assert "panoptic" not in monodepth.build_networks(base)
    bad = _config()
    bad.panoptic.max_segments = 9
    with pytest.raises(ValueError, match="max_segments"):
        monodepth.build_networks(bad)


@pytest.mark.slow
def test_train_step_with_panoptic_and_contrastive_compiles_once_and_is_finite():
    config = _config()
    networks = monodepth.build_networks(config)
    assert panoptic_plugin.HEAD in networks
    shapes = jax.eval_shape(
        functools.partial(monodepth.init_variables, networks, config), jax.random.PRNGKey(0))
    assert "panoptic" in shapes[0] and "panoptic" not in shapes[1]
    params, batch_stats = fill_like(shapes)
    state = TrainState.create(params, batch_stats, optax.adam(1e-4))
    batches = []
    for seed in range(2):
        batch = random_batch(config, 2, seed=seed)
        batch["panoptic"] = _labels(2, len(config.data.frame_ids))
        batches.append(batch)

    step_fn = functools.partial(monodepth.train_step, networks=networks, config=config)
    dp = parallel_lib.DataParallel(step_fn, mode="jit", devices=jax.local_devices()[:1])
    current = dp.put_state(state)
    metrics = []
    for batch in batches:
        current, step_metrics = dp.step(current, dp.put_batch(batch), jax.random.PRNGKey(1))
        metrics.append(dp.metrics_to_host(step_metrics))
    assert dp.num_traces == 1  # two steps, one compilation
    for step_metrics in metrics:
        assert all(np.isfinite(v) for v in step_metrics.values()), step_metrics
    first = metrics[0]
    assert first["panoptic"] == pytest.approx(0.35 * first["panoptic/unweighted"], rel=1e-6)
    assert first["contrastive"] == pytest.approx(0.1 * first["contrastive/unweighted"], rel=1e-6)
    assert first["loss"] == pytest.approx(
        first["photometric"] + first["smoothness"] + first["panoptic"] + first["contrastive"],
        rel=1e-5)
    assert first["panoptic/segments"] == 4.0 and first["panoptic/truncated"] == 0.0
    for s in range(3):
        assert first[f"panoptic/s{s}_mask"] > 0 and first[f"panoptic/s{s}_dice"] > 0
    assert first["contrastive/anchors"] > 0
    final = dp.get_state(current)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(final.params))
    moved = jax.tree_util.tree_map(lambda a, b: np.any(a != b), final.params["panoptic"],
                                   params["panoptic"])
    assert all(jax.tree_util.tree_leaves(moved))  # every head parameter trained

    # Eval forward pass: panoptic ids at the input resolution.
    predict = jax.jit(functools.partial(
        panoptic_plugin.predict_panoptic, networks=networks, config=config))
    ids = np.asarray(predict(final.params, final.batch_stats, jnp.zeros((1, H, W, 3))))
    assert ids.shape == (1, H, W) and ids.dtype == np.int32 and ids.min() >= -1


def test_missing_labels_are_reported():
    config = _config()
    networks = monodepth.build_networks(config)
    extra = panoptic_plugin.make_extra_loss(networks, config, 0)
    with pytest.raises(ValueError, match="load_panoptic"):
        extra({}, {}, {"frames": {}}, {}, jax.random.PRNGKey(0))


@pytest.mark.slow
def test_pmap_two_devices_match_one_device_panoptic_step():
    """The set loss's num_masks and CE weights are summed over the pmap axis and its points are
    keyed by the samples' split indices: 2 devices (one image each, 4 and 3 segments) take the
    step of 1 device on the same global batch."""
    config = _config()
    recipe = recipes.get(config.recipe)
    shapes = jax.eval_shape(functools.partial(
        recipe.init_variables, recipe.build_networks(config), config), jax.random.PRNGKey(0))
    params, batch_stats = fill_like(shapes)
    batch = random_batch(config, 2, seed=0)
    labels = _labels(2, len(config.data.frame_ids))
    labels[1][labels[1] == 13002] = 0  # image 1: one car fewer (sky, road, a car)
    batch["panoptic"] = labels
    batch["index"] = np.array([7, 3], np.int32)
    (single, m1), (double, m2) = one_vs_two_devices(recipe, config, params, batch_stats, [batch])
    names = ["loss", "panoptic", "contrastive"] + [
        f"panoptic/s{s}_{t}" for s in range(3) for t in ("ce", "mask", "dice")
        if f"panoptic/s{s}_{t}" in m1[0]]
    for name in names:
        assert m2[0][name] == pytest.approx(m1[0][name], rel=1e-4), name
    # Float reassociation only: the set loss's gradients are large (at init the panoptic term is
    # ~100x the photometric one), so compare to the size of the update, not to an absolute 1e-5.
    update = max_diff(single.params, params)
    difference = max_diff(single.params, double.params)
    assert difference < 1e-3 * update, (difference, update)
