"""configs/demo.py (Monodepth2 on the synthetic KITTI set, 192x64, CPU-sized) + the ISSL
self-sample loss (Cha et al.), at the same budget and seed: the pair of runs to compare.

  python -m jdepth.train --config configs/demo_issl.py --workdir runs/demo_issl
  python tools/eval_panoptic.py --workdir runs/demo_issl --depth_gt dense   # moving-car AbsRel

ISSL's values (App. A.2): n_k = 4 self-samples per image, theta_R 0.005 -> 0.2 over the epochs,
theta_T = 0.005, weight 0.1. Each step also runs the depth network on the 4 x 8 self-samples,
about 3x the wall time of a demo step on the CPU.
"""

from jdepth.config_files import sibling


def get_config():
    config = sibling(__file__, "demo").get_config()
    config.issl.enabled = True
    return config
