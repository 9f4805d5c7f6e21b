"""Test helpers for the panoptic tests: parameters filled in numpy from their shapes.

Initialising the head for real compiles one threefry program per initializer call (about 20 s
of XLA compile time on CPU for the whole head); shape-faithful numpy fills keep the tests fast.
The real initializers are still traced (by `jax.eval_shape`) wherever the shapes come from.
"""

import jax
import numpy as np
import pytest

_ZEROS = ("bias", "mean", "agg_bias", "proposal_bias")
_ONES = ("scale", "var")


def fill_like(shapes, seed: int = 0):
    """Concrete float32 arrays for a pytree of ShapeDtypeStructs (kernels ~ N(0, 1/fan_in))."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in _ZEROS:
            return np.zeros(leaf.shape, leaf.dtype)
        if name in _ONES:
            return np.ones(leaf.shape, leaf.dtype)
        if "kernel" in name:
            fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
            return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
        raise ValueError(f"tests/panoptic_helpers.py: no filler for parameter {name!r}")

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """XLA without most optimisations: about half the compile time of the programs here, which
    dominates these tests (as tests/test_models.py does). Import it into a test module to use it.
    """
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
