"""In-graph Hungarian matching (jdepth/matching.py) against scipy.optimize.linear_sum_assignment.

Every case uses one batch shape, so the matcher compiles once for the whole file.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth import matching
from panoptic_helpers import fast_compiles  # noqa: F401 (autouse fixture)

scipy_optimize = pytest.importorskip("scipy.optimize")

B, N, M = 8, 12, 8  # images, proposals, ground-truth slots
_match = jax.jit(matching.batched_hungarian_match)


def _scipy_total(cost: np.ndarray, valid: np.ndarray) -> float:
    rows, cols = scipy_optimize.linear_sum_assignment(cost[:, valid])
    return float(cost[:, valid][rows, cols].sum())


def _total(cost, proposal_of_slot, valid) -> float:
    return float(np.asarray(matching.assignment_cost(cost, proposal_of_slot, valid)))


def test_matches_scipy_assignment_on_random_costs():
    cost = np.random.default_rng(0).normal(size=(B, N, M)).astype(np.float32)
    got = np.asarray(_match(cost, np.ones((B, M), bool)))
    for b in range(B):
        assert len(set(got[b].tolist())) == M  # one-to-one
        rows, cols = scipy_optimize.linear_sum_assignment(cost[b])
        # Continuous random costs: the optimum is unique, so the assignment itself must agree.
        expected = np.empty(M, np.int64)
        expected[cols] = rows
        np.testing.assert_array_equal(got[b], expected)


def test_padded_slots_do_not_change_the_assignment_of_real_ones():
    rng = np.random.default_rng(1)
    valid = rng.random((B, M)) < 0.6
    valid[0], valid[1] = False, True  # an image without segments, one with all slots used
    # Garbage in the padded columns must not matter.
    cost = np.where(valid[:, None, :], rng.uniform(0, 5, (B, N, M)),
                    rng.uniform(-100, 100, (B, N, M))).astype(np.float32)
    got = np.asarray(_match(cost, valid))
    for b in range(B):
        assert len(set(got[b].tolist())) == M
        expected = _scipy_total(cost[b], valid[b]) if valid[b].any() else 0.0
        assert _total(cost[b], got[b], valid[b]) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_integer_costs_with_ties_reach_the_optimal_total():
    cost = np.random.default_rng(2).integers(0, 4, size=(B, N, M)).astype(np.float32)
    valid = np.ones((B, M), bool)
    got = np.asarray(_match(cost, valid))
    for b in range(B):
        assert _total(cost[b], got[b], valid[b]) == pytest.approx(_scipy_total(cost[b], valid[b]))


def test_non_finite_costs_still_give_a_permutation_that_avoids_them():
    cost = np.random.default_rng(3).random((B, N, M)).astype(np.float32)
    cost[:, 2, 1], cost[:, 5, 3] = np.nan, np.inf
    got = np.asarray(_match(cost, np.ones((B, M), bool)))
    for b in range(B):
        assert len(set(got[b].tolist())) == M and got[b, 1] != 2 and got[b, 3] != 5


def test_more_slots_than_proposals_is_an_error():
    with pytest.raises(ValueError, match="max_segments <= num_proposals"):
        matching.hungarian_match(jnp.zeros((3, 4)), jnp.ones(4, bool))
