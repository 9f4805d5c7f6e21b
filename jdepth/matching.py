"""Hungarian matching of proposals to ground-truth segments, inside the jitted train step.

Choice (DESIGN.md item 2): `optax.assignment.hungarian_algorithm`, an O(n^2 m) JAX implementation
(a scan over rows with a while loop; Scenic's). It runs in-graph under jit/vmap/pmap, needs no
host round trip and no scipy at train time (scipy is a test extra only), and is cheap at our
sizes: a batch of 4 matrices of 100 x 64 takes ~2 ms on a 2-core CPU. The alternative, a numpy
Hungarian behind `jax.pure_callback`, would synchronise host and device at every stage of every
step.

Static shapes: images have different numbers of segments, so the ground truth is padded to M
slots and the padded columns get a constant cost (0). With N >= M proposals every column is
assigned; a constant column adds the same amount to every complete assignment, so the optimal
assignment of the real columns is the optimum of the unpadded problem (the padded columns take
whatever proposals are left). tests/test_matching.py checks this against
scipy.optimize.linear_sum_assignment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def hungarian_match(cost: jax.Array, valid: jax.Array) -> jax.Array:
    """Minimum-cost one-to-one assignment of ground-truth columns to proposal rows.

    Args:
      cost: [N, M] float cost of giving ground-truth slot m to proposal n (no gradient needed;
        it is stopped here).
      valid: [M] bool, which slots hold a real segment.

    Returns:
      [M] int32 proposal index of every slot; distinct over all M slots. For valid slots this is
      `scipy.optimize.linear_sum_assignment` restricted to the valid columns (up to ties).

    Raises:
      ValueError: N < M (every slot needs its own proposal).
    """
    num_proposals, num_slots = cost.shape
    if num_proposals < num_slots:
        raise ValueError(
            f"jdepth/matching.py: {num_proposals} proposals cannot cover {num_slots} ground-truth "
            "slots; use max_segments <= num_proposals"
        )
    cost = jax.lax.stop_gradient(cost)
    # Non-finite costs would stall the augmenting-path search; treat them as very bad matches.
    cost = jnp.nan_to_num(cost.astype(jnp.float32), nan=1e6, posinf=1e6, neginf=-1e6)
    cost = jnp.where(valid[None, :], cost, 0.0)
    rows, cols = optax.assignment.hungarian_algorithm(cost)
    # min(N, M) = M pairs: every column appears once.
    return jnp.zeros(num_slots, jnp.int32).at[cols].set(rows.astype(jnp.int32))


def batched_hungarian_match(cost: jax.Array, valid: jax.Array) -> jax.Array:
    """`hungarian_match` over a batch: cost [B, N, M], valid [B, M] -> [B, M] int32."""
    return jax.vmap(hungarian_match)(cost, valid)


def assignment_cost(cost: jax.Array, proposal_of_slot: jax.Array, valid: jax.Array) -> jax.Array:
    """Total cost of the valid slots' assignment: cost [N, M], [M], [M] -> scalar."""
    picked = jnp.take_along_axis(cost, proposal_of_slot[None, :], axis=0)[0]
    return jnp.sum(jnp.where(valid, picked, 0.0))
