"""tools/instance_depth.py: per-car depth ratios on hand-made frames."""

import importlib.util
import sys

import numpy as np
import pytest
from conftest import REPO

from jdepth.data import panoptic_labels as pl

CAR = 13  # Cityscapes "car"


def _tool():
    spec = importlib.util.spec_from_file_location("instance_depth",
                                                  REPO / "tools" / "instance_depth.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["instance_depth"] = module
    spec.loader.exec_module(module)
    return module


def _frame():
    """Road (id 7000) at 10 m; car 1 (rows 2-5) at 8 m, car 2 (rows 6-9, cut by the bottom)."""
    ids = np.full((10, 8), 7 * pl.LABEL_DIVISOR, np.int64)
    ids[2:6, 1:4] = CAR * pl.LABEL_DIVISOR + 1
    ids[6:10, 5:8] = CAR * pl.LABEL_DIVISOR + 2
    gt = np.full((10, 8), 10.0)
    gt[2:6, 1:4] = 8.0
    gt[6:10, 5:8] = 6.0
    return ids, gt


def test_ratios_of_car_base_top_and_road_below():
    tool = _tool()
    ids, gt = _frame()
    depth = gt.copy()
    depth[2:4, 1:4] = 16.0  # the car's upper half bleeds into the background: twice too far
    depth[6:8, 1:4] = 5.0  # the road below it half as deep
    rows = tool.instance_ratios(depth, gt, ids, frozenset({CAR * pl.LABEL_DIVISOR + 2}))
    assert [r["moving"] for r in rows] == [False, True]
    first, second = rows
    assert first["top"] == pytest.approx(2.0) and first["base"] == pytest.approx(1.0)
    assert first["car"] == pytest.approx(12.0 / 8.0) and first["road"] == pytest.approx(0.5)
    assert first["absrel"] == pytest.approx(0.5)  # half its pixels at +100 %
    assert second["car"] == pytest.approx(1.0) and np.isnan(second["road"])  # nothing below
    summary = tool.summarise(rows)
    assert summary["parked"]["instances"] == 1 and summary["moving"]["instances"] == 1
    assert summary["parked"]["ratio_median"]["top"] == pytest.approx(2.0)
    assert np.isnan(summary["moving"]["ratio_median"]["road"])
    assert summary["moving"]["absrel_mean"] == pytest.approx(0.0)


def test_small_instances_and_pixels_without_truth_are_left_out():
    tool = _tool()
    ids, gt = _frame()
    gt[2:6, 1:4] = 0.0  # car 1 has no true depth at all
    rows = tool.instance_ratios(gt.copy(), gt, ids, frozenset())
    assert len(rows) == 1 and rows[0]["car"] == pytest.approx(1.0)
    assert tool.instance_ratios(gt, gt, ids, frozenset(), min_area_fraction=0.2) == []
