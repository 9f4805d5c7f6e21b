"""Monodepth2 + panoptic head + instance-aware contrastive loss (Shyam et al. Sec. 3.1, 4.2.1).

  python -m jdepth.train --config configs/monodepth2_panoptic.py --workdir runs/md2_pan \
      --config.data.root=/data/kitti_raw --config.data.split_dir=splits/eigen_zhou \
      --config.data.test_split=splits/eigen/test_files.txt

Needs panoptic label PNGs next to the frames (`panoptic_0{2,3}/data/%010d.png`, Cityscapes ids;
DESIGN.md item 1); the synthetic dataset ships exact ones. The paper reports this branch only on
top of ManyDepth / HRNet students (no Monodepth2 number); the other recipes switch it on the same
way: `panoptic_config.enable(config)`, or `--config.data.load_panoptic=True
--config.panoptic.enabled=True --config.contrastive.enabled=True` on any recipe. Ablations:
`--config.contrastive.kind=triplet --config.contrastive.labels=semantic` (FSRE's loss as
published), `--config.panoptic.enabled=False` (contrastive only). Costs per step: the head on the stride-4 map plus 3 Hungarian matchings (~ms).
"""

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def get_config():
    return panoptic_config.enable(sibling(__file__, "monodepth2").get_config())
