"""configs/demo.py (Monodepth2 on the synthetic KITTI set, 192x64, CPU-sized) + the panoptic head
and the instance-aware contrastive loss, at the same budget: the pair of runs to compare.

  python -m jdepth.train --config configs/demo_panoptic.py --workdir runs/demo_panoptic
  python tools/eval_panoptic.py --workdir runs/demo_panoptic --depth_gt dense

The synthetic set ships exact panoptic labels (road, sidewalk, building, pole, vegetation,
terrain, sky; cars as instances). At 192x64 the head's stride-4 map is 48x16, so the matching and
mask losses use 768 points per mask (`panoptic.num_points` is capped at the map size).

Weights: 1/100 of the paper's (panoptic 0.0035, contrastive 0.001), a from-scratch aid like the
others of configs/demo.py. At step 0 the Mask2Former loss (3 stages x (2 CE + 5 BCE + 5 dice)) and
the contrastive loss are one to three orders of magnitude above the photometric loss
(tools/panoptic_loss_scale.py; RESULTS.md, "Panoptic loss scale at initialisation"); without
ImageNet weights and at 258 steps, the paper's 0.35 / 0.1, 1/10 of them and a warm-up to step 129
all kept the ego translation near zero and ended worse than the "average depth" baseline (AbsRel 0.51-0.60, RESULTS.md). At
1/100 the ego translation grows as in plain Monodepth2 and the run beats the baseline on the Eigen
table (0.337 vs 0.357), still behind plain Monodepth2 (0.263 / 0.275 over two seeds).
configs/monodepth2_panoptic.py (KITTI, ImageNet encoder) keeps the paper's weights.
"""

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def get_config():
    config = panoptic_config.enable(sibling(__file__, "demo").get_config())
    config.panoptic.weight = 0.0035
    config.contrastive.weight = 0.001
    return config
