"""jdepth's BatchNorm against torch.nn.BatchNorm2d in train mode: the running statistics.

torch folds the *unbiased* batch variance (n / (n - 1)) into running_var while normalising with the
biased one; jdepth/models/layers.py `BatchNorm` does the same, here checked on a conv + BN module
(also synchronised over a pmap axis, where n counts the values of every device) and on every
BatchNorm of the real ResNet encoder, each fed the input it sees in the network.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth.models.layers import BatchNorm
from jdepth.models.resnet import ResNetEncoder, _batch_norm, _conv

torch = pytest.importorskip("torch")

RTOL = 1e-6


class _ConvBN(nn.Module):
    """A 3x3 conv and the encoders' BatchNorm (momentum, epsilon as every network builds it)."""

    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train):
        x = _conv(8, 3, 1, 1, jnp.float32, "conv")(x)
        return _batch_norm("bn", train, self.axis_name, jnp.float32)(x)


def _bn_variables(rng, channels):
    params = {"scale": rng.uniform(0.8, 1.2, channels), "bias": rng.normal(0, 0.1, channels)}
    stats = {"mean": rng.normal(0, 0.1, channels), "var": rng.uniform(0.5, 1.5, channels)}
    as32 = lambda d: {k: np.asarray(v, np.float32) for k, v in d.items()}  # noqa: E731
    return as32(params), as32(stats)


def _torch_bn(params, stats):
    """torch.nn.BatchNorm2d (defaults: momentum 0.1, eps 1e-5) holding the same variables."""
    bn = torch.nn.BatchNorm2d(len(stats["mean"]))
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(params["scale"]))
        bn.bias.copy_(torch.from_numpy(params["bias"]))
        bn.running_mean.copy_(torch.from_numpy(stats["mean"]))
        bn.running_var.copy_(torch.from_numpy(stats["var"]))
    return bn.train()


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _assert_stats_match(torch_bn, new_stats, what):
    for key, jax_key in (("running_mean", "mean"), ("running_var", "var")):
        expected = getattr(torch_bn, key).numpy()
        # Relative to the statistic's scale: a mean near 0 keeps float32 rounding of the others.
        np.testing.assert_allclose(np.asarray(new_stats[jax_key]), expected, rtol=RTOL,
                                   atol=RTOL * np.abs(expected).max(), err_msg=f"{what}: {key}")


@pytest.fixture(scope="module")
def conv_bn():
    rng = np.random.default_rng(0)
    # Off-centre input: a non-zero batch mean, so the mean update is exercised too.
    image = rng.uniform(0, 1, (4, 6, 10, 3)).astype(np.float32)
    kernel = rng.normal(0, 0.5, (3, 3, 3, 8)).astype(np.float32)
    params, stats = _bn_variables(rng, 8)
    variables = {"params": {"conv": {"kernel": kernel}, "bn": params},
                 "batch_stats": {"bn": stats}}
    conv = torch.nn.Conv2d(3, 8, 3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
    bn = _torch_bn(params, stats)
    with torch.no_grad():
        out = bn(conv(_nchw(image))).numpy().transpose(0, 2, 3, 1)
    return variables, image, bn, out


def test_conv_bn_train_step_matches_torch(conv_bn):
    variables, image, torch_bn, torch_out = conv_bn
    out, updates = jax.jit(lambda v, x: _ConvBN().apply(v, x, True, mutable=["batch_stats"]))(
        variables, image)
    # The batch itself is normalised with the biased variance, as torch does.
    np.testing.assert_allclose(out, torch_out, rtol=1e-5, atol=1e-5)
    _assert_stats_match(torch_bn, updates["batch_stats"]["bn"], "conv+bn")


def test_synchronised_bn_uses_the_global_count(conv_bn):
    """Over a pmap axis the unbiased correction counts every device's values (SyncBatchNorm)."""
    assert jax.local_device_count() >= 2, "tests/conftest.py should force 2 CPU devices"
    variables, image, torch_bn, torch_out = conv_bn
    out, updates = jax.pmap(
        lambda v, x: _ConvBN("batch").apply(v, x, True, mutable=["batch_stats"]),
        axis_name="batch", in_axes=(None, 0))(variables, image.reshape(2, 2, *image.shape[1:]))
    np.testing.assert_allclose(out.reshape(torch_out.shape), torch_out, rtol=1e-5, atol=1e-5)
    for device in range(2):
        per_device = {k: v[device] for k, v in updates["batch_stats"]["bn"].items()}
        _assert_stats_match(torch_bn, per_device, f"device {device}")


def test_every_resnet_encoder_bn_updates_like_torch():
    """Each BatchNorm of ResNet-18, fed the input it gets in the network, updates its running
    statistics as torch.nn.BatchNorm2d does (so none is a plain flax BatchNorm)."""
    rng = np.random.default_rng(1)
    encoder = ResNetEncoder(18)
    image = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda x: encoder.init(jax.random.key(0), x, False), image)
    fills = {"kernel": lambda s: rng.normal(0.0, np.sqrt(2.0 / np.prod(s[:-1])), s),
             "scale": lambda s: rng.uniform(0.8, 1.2, s), "bias": lambda s: rng.normal(0, .1, s),
             "mean": lambda s: rng.normal(0.0, 0.1, s), "var": lambda s: rng.uniform(.5, 1.5, s)}
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: np.asarray(fills[path[-1].key](leaf.shape), np.float32), shapes)

    inputs = {}

    def record_bn_inputs(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            assert isinstance(context.module, BatchNorm), context.module.path
            inputs[context.module.path] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record_bn_inputs):
        _, updates = encoder.apply(variables, image, True, mutable=["batch_stats"])
    assert len(inputs) == 20  # ResNet-18: bn1, 16 block BNs, 3 downsample BNs

    for path, x in inputs.items():
        params, stats = variables["params"], variables["batch_stats"]
        new = updates["batch_stats"]
        for name in path:
            params, stats, new = params[name], stats[name], new[name]
        torch_bn = _torch_bn(params, stats)
        with torch.no_grad():
            torch_bn(_nchw(x))
        _assert_stats_match(torch_bn, new, "/".join(path))
