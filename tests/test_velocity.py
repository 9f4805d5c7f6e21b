"""Speed supervision of the pose translation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth import geometry
from jdepth.losses.velocity import velocity_loss


def test_hand_values_and_inverted_poses():
    # Frame -1 predicted in reverse order (inverted matrix), frame +1 forward: both lengths count.
    aa = jnp.array([[0.0, 0.05, 0.0]])
    back = geometry.transformation_from_parameters(aa, jnp.array([[0.0, 0.0, 0.8]]), invert=True)
    fwd = geometry.transformation_from_parameters(aa, jnp.array([[0.0, 0.6, 0.8]]))
    speed = jnp.array([9.0])  # 0.9 m per 0.1 s frame
    loss = velocity_loss({-1: back, 1: fwd}, speed, 0.1)
    # |0.8 - 0.9| and |1.0 - 0.9| -> mean 0.1
    assert float(loss) == pytest.approx(0.1, abs=1e-6)
    # Two frames away the target doubles.
    two = geometry.transformation_from_parameters(aa, jnp.array([[0.0, 0.0, 1.8]]))
    assert float(velocity_loss({2: two}, speed, 0.1)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_finite_at_zero_translation():
    def f(t):
        return velocity_loss({1: geometry.translation_matrix(t)}, jnp.array([10.0]), 0.1)

    g = jax.grad(f)(jnp.zeros((1, 3)))
    assert np.all(np.isfinite(np.asarray(g)))
