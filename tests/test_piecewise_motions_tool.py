"""tools/piecewise_motions.py: slot motion ratios, slot labels and the parked / moving summary."""

import importlib.util
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from jdepth import geometry


def _tool():
    spec = importlib.util.spec_from_file_location(
        "piecewise_motions", REPO / "tools" / "piecewise_motions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["piecewise_motions"] = module
    spec.loader.exec_module(module)
    return module


def test_slot_motions_are_translation_ratios_and_rotation_angles_of_valid_slots():
    tool = _tool()
    ego = np.tile(np.eye(4), (2, 1, 1))
    ego[0, :3, 3] = [0.0, 0.0, -2.0]  # |t| = 2
    ego[1, :3, 3] = [0.3, 0.0, -0.4]  # |t| = 0.5
    residual = np.tile(np.eye(4), (2, 3, 1, 1))
    residual[0, 0, :3, 3] = [1.0, 0.0, 0.0]
    residual[0, 2] = np.asarray(geometry.transformation_from_parameters(
        jnp.asarray([[0.0, 0.1, 0.0]]), jnp.asarray([[0.0, 0.0, 0.0]])))[0]
    residual[1, 1] = np.asarray(geometry.transformation_from_parameters(
        jnp.asarray([[1e-4, 0.0, 0.0]]), jnp.asarray([[0.0, 0.0, 0.0]])))[0]
    residual[1, 1, :3, 3] = [0.0, 0.0, 0.25]
    residual[1, 2, :3, 3] = [9.0, 9.0, 9.0]  # invalid: not counted
    valid = np.array([[True, False, True], [False, True, False]])
    ratios, angles = tool.slot_motions(residual, ego, valid)
    np.testing.assert_allclose(ratios, [0.5, 0.0, 0.5], atol=1e-6)
    # A 1e-4 rad rotation is resolved (float32 matrices).
    np.testing.assert_allclose(angles, [0.0, np.degrees(0.1), np.degrees(1e-4)], rtol=1e-3,
                               atol=1e-6)


def test_slots_are_labelled_by_their_majority_panoptic_id():
    tool = _tool()
    panoptic = np.zeros((1, 4, 4), np.int64)
    panoptic[0, :2] = 26001
    panoptic[0, 2:] = 26002
    masks = np.zeros((1, 2, 4, 4), bool)
    masks[0, 0, 1:4, 0] = True  # one pixel of 26001, two of 26002
    masks[0, 1, 0, :] = True
    ids = tool.majority_ids(panoptic, masks, np.array([[True, True]]))
    np.testing.assert_array_equal(ids, [26002, 26001])


def test_summary_splits_parked_and_moving_slots():
    tool = _tool()
    moving = np.array([False, True, False, False, True])
    ratios = np.array([0.1, 2.0, 0.3, 0.2, 4.0])
    summary = tool.summarise(moving, ratios, np.zeros(5))
    assert summary["parked"]["slots"] == 3 and summary["moving"]["slots"] == 2
    assert summary["parked"]["ratio_median"] == pytest.approx(0.2)
    assert summary["moving"]["ratio_median"] == pytest.approx(3.0)
    assert set(tool.summarise(np.zeros(2, bool), ratios[:2], np.zeros(2))) == {"parked"}
