"""HRDepth+ (Student-I) on the synthetic KITTI set with the data, resolution and budget of
configs/demo.py (192x64, CPU-sized), panoptic head and contrastive loss on:

  python -m jdepth.train --config configs/hrdepth_plus_demo.py --workdir runs/hrdepth_plus_demo

Compare its median-scaled test table with configs/demo_panoptic.py (same plug-ins, ResNet-18;
that config trains them at 1/100 of the paper's weights, which this one keeps: add
--config.panoptic.weight=0.0035 --config.contrastive.weight=0.001 to match it).
"""

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def get_config():
    config = sibling(__file__, "demo").get_config()
    return panoptic_config.enable(sibling(__file__, "hrdepth_plus").add_student(config))
