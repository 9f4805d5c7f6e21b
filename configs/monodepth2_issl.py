"""Monodepth2 + ISSL (Cha et al.): the monodepth2 recipe with the isometric self-sample loss.

  python -m jdepth.train --config configs/monodepth2_issl.py --workdir runs/md2_issl \
      --config.data.root=/data/kitti_raw --config.data.split_dir=splits/eigen_zhou \
      --config.data.test_split=splits/eigen/test_files.txt

Reference: KITTI Eigen AbsRel 0.110 (paper Table 1, M, 640x192, K), against 0.115 without ISSL.
Same training schedule as Monodepth2 (20 epochs, batch 12, Adam 1e-4, x0.1 after 15 epochs);
n_k = 4 self-samples per image, theta_R 0.005 -> 0.2 over the epochs, theta_T = 0.005, weight 0.1.
The depth network also runs forward and backward on the 4 x B self-samples: a step cost about
3.1x a Monodepth2 step on a 2-core CPU at 64x192, batch 8 (the generator and loss are ~5 % of that).
"""

from jdepth.config_files import sibling


def get_config():
    config = sibling(__file__, "monodepth2").get_config()
    config.issl.enabled = True
    return config
