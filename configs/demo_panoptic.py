"""configs/demo.py (Monodepth2 on the synthetic KITTI set, 192x64, CPU-sized) + the panoptic head
and the instance-aware contrastive loss, at the same budget: the pair of runs to compare.

  python -m jdepth.train --config configs/demo_panoptic.py --workdir runs/demo_panoptic
  python tools/eval_panoptic.py --workdir runs/demo_panoptic --depth_gt dense

The synthetic set ships exact panoptic labels (road, sidewalk, building, pole, vegetation,
terrain, sky; cars as instances). At 192x64 the head's stride-4 map is 48x16, so the matching and
mask losses use 768 points per mask (`panoptic.num_points` is capped at the map size).
"""

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def get_config():
    return panoptic_config.enable(sibling(__file__, "demo").get_config())
