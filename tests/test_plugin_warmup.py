"""Plug-in warm-ups (jdepth/training/plugin_warmup.py): before `start_step` no plug-in gradient
reaches the depth network, the panoptic head still trains, and the values are unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import linen as nn
from panoptic_helpers import fast_compiles, fill_like  # noqa: F401 (autouse fixture)

from jdepth.training import panoptic as panoptic_plugin
from jdepth.training import issl_plugin, panoptic_config, plugin_warmup

H = W = 32


def test_active_switches_at_the_start_step_and_rejects_negative_starts():
    assert [float(plugin_warmup.active(s, 3)) for s in (0, 2, 3, 9)] == [0.0, 0.0, 1.0, 1.0]
    assert float(plugin_warmup.active(0, 0)) == 1.0  # 0: on from the first step (the papers)
    traced = jax.jit(lambda s: plugin_warmup.active(s, 5))
    assert float(traced(jnp.int32(4))) == 0.0 and float(traced(jnp.int32(5))) == 1.0
    with pytest.raises(ValueError, match="start_step"):
        plugin_warmup.active(0, -1)


def test_scale_gradient_keeps_values_and_scales_the_gradient():
    x = jnp.array([1.5, -2.0, 3.0])
    for factor in (0.0, 1.0):
        value = plugin_warmup.scale_gradient({"a": x}, jnp.float32(factor))["a"]
        np.testing.assert_array_equal(value, x)  # bit-identical values
        grad = jax.grad(lambda v: jnp.sum(plugin_warmup.scale_gradient(v, factor) ** 2))(x)
        np.testing.assert_allclose(grad, factor * 2 * x)


def _labels() -> jnp.ndarray:
    ids = np.full((2, H, W), 10, np.int32)  # sky
    ids[:, H // 2:] = 0  # road
    ids[0, 12:28, 4:14], ids[1, 10:26, 18:30] = 13001, 13002  # one car each
    return jnp.asarray(ids)


def _panoptic_setup(start: int):
    config = tiny_config(height=H, width=W, batch_size=2)
    panoptic_config.enable(config)
    config.panoptic.update(dict(num_proposals=6, hidden_dim=16, agg_dim=8, ffn_dim=32,
                                num_heads=2, num_cls_fcs=1, num_mask_fcs=1, max_segments=4,
                                start_step=start))
    config.contrastive.start_step = start
    config.contrastive.scales = (2, 1)
    config.contrastive.patch_size = 3
    rng = np.random.default_rng(0)
    encoder = [jnp.asarray(rng.normal(size=(2, H // 2**s, W // 2**s, 8)), jnp.float32)
               for s in range(1, 6)]
    decoder = {s: jnp.asarray(rng.normal(size=(2, H // 2**s, W // 2**s, 4)), jnp.float32)
               for s in (1, 2)}
    networks = {panoptic_plugin.HEAD: panoptic_plugin.build_head(config)}
    shapes = jax.eval_shape(lambda: panoptic_plugin.init_head(
        networks[panoptic_plugin.HEAD], encoder, jax.random.PRNGKey(0)))
    params = {panoptic_plugin.HEAD: fill_like(shapes)}
    return config, networks, params, encoder, decoder


def test_panoptic_head_trains_but_reaches_the_encoder_only_from_its_start_step():
    config, networks, params, encoder, decoder = _panoptic_setup(start=3)

    @jax.jit
    def loss_and_grads(params, encoder, decoder, step):
        def loss(params, encoder, decoder):
            fn = panoptic_plugin.make_extra_loss(networks, config, step)
            outputs = {"depth_aux": {"encoder_features": encoder, "decoder_features": decoder}}
            return fn(params, {}, {"panoptic": _labels()}, outputs, jax.random.PRNGKey(1))
        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, encoder, decoder)

    def norm(tree):
        return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)))

    (before, aux_before), (head_g0, enc_g0, dec_g0) = loss_and_grads(
        params, encoder, decoder, jnp.int32(2))
    (after, aux_after), (head_g1, enc_g1, dec_g1) = loss_and_grads(
        params, encoder, decoder, jnp.int32(3))
    assert loss_and_grads._cache_size() == 1  # switching on does not recompile

    # Before: the head learns on detached features; the contrastive term is off.
    assert norm(head_g0) > 0
    assert norm(enc_g0) == 0.0 and norm(dec_g0) == 0.0
    assert aux_before["panoptic/encoder_grad"] == 0.0 and aux_before["contrastive"] == 0.0
    assert aux_before["contrastive/unweighted"] != 0.0  # still computed and logged
    assert float(before) == pytest.approx(float(aux_before["panoptic"]), rel=1e-6)
    # After: both terms reach the depth network's features, the head's gradient is the same.
    assert norm(enc_g1) > 0 and norm(dec_g1) > 0
    assert aux_after["panoptic/encoder_grad"] == 1.0
    assert float(aux_after["contrastive"]) == pytest.approx(
        0.1 * float(aux_after["contrastive/unweighted"]), rel=1e-6)
    assert float(aux_after["panoptic"]) == float(aux_before["panoptic"])
    for g0, g1 in zip(jax.tree_util.tree_leaves(head_g0), jax.tree_util.tree_leaves(head_g1)):
        np.testing.assert_allclose(g0, g1, rtol=1e-5, atol=1e-7)


class _TinyDepthNet(nn.Module):
    """The DepthNet interface ((disps, aux), BatchNorm) in one conv, to keep the test cheap."""

    @nn.compact
    def __call__(self, image, train: bool):
        x = nn.Conv(4, (3, 3))(image)
        x = nn.BatchNorm(use_running_average=not train)(x)
        disp = nn.sigmoid(nn.Conv(1, (3, 3))(nn.relu(x)))
        return [disp], {}


def test_issl_weight_is_zero_before_its_start_step():
    config = tiny_config(height=H, width=W, batch_size=2)
    config.issl.enabled = True
    config.issl.start_step = 4
    config.train.steps_per_epoch = 10
    net = _TinyDepthNet()
    image = jnp.asarray(np.random.default_rng(0).uniform(size=(2, H, W, 3)), jnp.float32)
    variables = net.init(jax.random.PRNGKey(0), image, train=False)
    params, stats = {"depth": variables["params"]}, {"depth": variables["batch_stats"]}
    K = jnp.broadcast_to(jnp.array([[16.0, 0, 16, 0], [0, 16, 16, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
                         (2, 4, 4))
    inputs = {"frames_aug": {0: image}, "K": K, "inv_K": jnp.linalg.inv(K),
              "index": jnp.arange(2)}

    @jax.jit
    def loss_and_grads(params, step):
        def loss(params):
            (disps, _), _ = net.apply({"params": params["depth"], "batch_stats": stats["depth"]},
                                      image, train=True, mutable=["batch_stats"])
            fn = issl_plugin.make_extra_loss(net, config, step)
            return fn(params, stats, inputs, {"disps": disps}, jax.random.PRNGKey(2))
        return jax.value_and_grad(loss, has_aux=True)(params)

    (before, aux0), grads0 = loss_and_grads(params, jnp.int32(3))
    (after, aux1), grads1 = loss_and_grads(params, jnp.int32(4))
    assert loss_and_grads._cache_size() == 1
    assert float(before) == 0.0 and float(aux0["issl"]) == 0.0
    assert all(np.all(g == 0) for g in jax.tree_util.tree_leaves(grads0))
    assert float(aux0["issl/unweighted"]) > 0  # computed and logged all along
    assert float(after) == pytest.approx(0.1 * float(aux1["issl/unweighted"]), rel=1e-6)
    assert any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads1))
