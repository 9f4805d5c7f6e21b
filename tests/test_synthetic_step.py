"""jdepth/training/synthetic_step.py: the benchmark batch matches a pipeline sample."""

import numpy as np
import pytest
from conftest import load_config

from jdepth.data import pipeline
from jdepth.training import loop, synthetic_step


@pytest.mark.parametrize("name", ["demo", "demo_piecewise", "manydepth_metric_demo"])
def test_synthetic_batch_matches_a_pipeline_sample(name):
    config = load_config(name)
    cfg = loop.pipeline_config(config)
    h, w = config.data.height, config.data.width
    frames = len(config.data.frame_ids)
    ids = np.full((h, w), 10, np.int32)
    ids[h // 2:, : w // 4] = 26001  # one car, 1/8 of the image
    sample = pipeline.assemble_sample(
        3, [np.zeros((h, w, 3), np.uint8)] * frames, np.eye(4), False,
        np.ones(5, np.float32), cfg, panoptic=[ids] * frames, velocity=[1.0] * frames)
    batch = synthetic_step.synthetic_batch(config)
    assert set(batch) == set(sample)
    for key, value in sample.items():
        value = np.asarray(value)
        assert batch[key].shape == (config.train.batch_size,) + value.shape, key
        assert batch[key].dtype == value.dtype, key
