"""The CPU compile options (jdepth/training/compile_options.py) change speed, not results.

Every convolution shape the recipes use (ResNet stem 7x7/2, 3x3/1 and 3x3/2, 1x1/2 downsampling,
the decoders' 3x3 on reflection-padded inputs, 1x1 heads, the panoptic head's transposed 4x4/2)
gives the same values and gradients with XLA's default YNNPACK convolutions and with the options.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth.training import compile_options
from jdepth.training.parallel import DataParallel

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compile options")

DN = ("NHWC", "HWIO", "NHWC")

# (name, input [B, H, W, C], kernel size, out channels, stride, padding, transposed)
SHAPES = [
    ("stem 7x7/2", (2, 32, 48, 6), 7, 16, 2, 3, False),
    ("3x3/1", (2, 16, 24, 16), 3, 16, 1, 1, False),
    ("3x3/2", (2, 16, 24, 16), 3, 32, 2, 1, False),
    ("1x1/2 downsample", (2, 16, 24, 16), 1, 32, 2, 0, False),
    ("3x3 valid (reflection-padded decoder)", (2, 18, 26, 24), 3, 8, 1, 0, False),
    ("3x3 to one channel (disparity head)", (2, 18, 26, 8), 3, 1, 1, 0, False),
    ("1x1/1", (2, 8, 12, 32), 1, 12, 1, 0, False),
    ("transposed 4x4/2 (panoptic head)", (2, 8, 12, 16), 4, 8, 2, 2, True),
]


def _conv(x, w, stride, padding, transposed):
    if transposed:
        return jax.lax.conv_transpose(x, w, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=DN)
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                        dimension_numbers=DN)


@pytest.mark.parametrize("name,shape,k,out,stride,padding,transposed", SHAPES,
                         ids=[s[0] for s in SHAPES])
def test_same_values_and_gradients(name, shape, k, out, stride, padding, transposed):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, shape[-1], out)) / np.sqrt(k * k * shape[-1]),
                    jnp.float32)

    def value_and_grads(x, w):
        y, vjp = jax.vjp(lambda x, w: _conv(x, w, stride, padding, transposed), x, w)
        cotangent = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
        return (y, *vjp(cotangent))

    lowered = jax.jit(value_and_grads).lower(x, w)
    default = lowered.compile()(x, w)
    tuned_program = compile_options.compile_lowered(lowered, "cpu")
    tuned = tuned_program(x, w)
    for a, b, what in zip(default, tuned, ("value", "input gradient", "kernel gradient")):
        scale = float(jnp.max(jnp.abs(a)))
        # Two float32 summation orders of the same products: agreement to ~1e-6 of the scale.
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=2e-5 * scale,
                                   err_msg=f"{name}: {what}")
    # The options took effect: no convolution is handed to YNNPACK.
    assert not _ynn_convolutions(tuned_program.as_text()), name


def _ynn_convolutions(hlo_text: str) -> list[str]:
    """Names of YNNPACK fusions whose called computation contains a convolution."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$", line)
        if header:
            current = computations.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    found = []
    for line in hlo_text.splitlines():
        fusion = re.search(r"%(ynn_fusion[\w.]*) = .*calls=%([\w.\-]+)", line)
        if fusion and any("convolution(" in body for body in computations.get(fusion.group(2), [])):
            found.append(fusion.group(1))
    return found


def test_default_cpu_compile_hands_convolutions_to_ynnpack():
    """What the options are for: at layer sizes the default compile gives the kernel gradient to
    YNNPACK (skipped if a jaxlib stops doing so; then the options are moot, not wrong)."""
    x = jnp.ones((4, 24, 40, 32))
    w = jnp.ones((3, 3, 32, 32)) * 0.01
    lowered = jax.jit(lambda x, w: jax.vjp(
        lambda w: _conv(x, w, 1, 1, False), w)[1](jnp.ones((4, 24, 40, 32)))[0]).lower(x, w)
    default = _ynn_convolutions(lowered.compile().as_text())
    if not default:
        pytest.skip("this jaxlib does not use YNNPACK for convolutions")
    assert not _ynn_convolutions(compile_options.compile_lowered(lowered, "cpu").as_text())


def test_options_only_on_cpu():
    assert compile_options.for_platform("cpu") == compile_options.CPU_OPTIONS
    assert compile_options.for_platform("gpu") == {}
    assert compile_options.for_platform("cuda") == {}
    assert compile_options.for_platform("tpu") == {}


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_step_compiles_once_and_refuses_a_new_shape(mode):
    """DataParallel compiles ahead of time with the options: a batch of another shape is an
    error, never a silent recompile."""
    from flax import struct

    @struct.dataclass
    class State:
        w: jax.Array
        skipped_steps: jax.Array

    def step(state, batch, rng, axis_name):
        del rng
        loss = jnp.mean((batch["x"] @ state.w) ** 2)
        if axis_name is not None:
            loss = jax.lax.pmean(loss, axis_name)
        return state.replace(w=state.w - 0.1 * state.w), {"loss": loss}

    parallel = DataParallel(step, mode=mode)
    state = parallel.put_state(State(w=jnp.ones((3, 2)), skipped_steps=jnp.zeros((), jnp.int32)))
    batch = {"x": np.ones((2, 3), np.float32)}
    for _ in range(3):
        state, metrics = parallel.step(state, parallel.put_batch(batch), jax.random.PRNGKey(0))
    assert parallel.num_traces == 1
    assert parallel.metrics_to_host(metrics)["loss"] > 0
    with pytest.raises(Exception):
        parallel.step(state, parallel.put_batch({"x": np.ones((4, 3), np.float32)}),
                      jax.random.PRNGKey(0))
    assert parallel.num_traces == 1
