"""HRDepth+ (Student-I) on the synthetic KITTI set with the data, resolution and budget of
configs/demo.py (192x64, CPU-sized), every component of configs/hrdepth_plus.py on (panoptic head,
contrastive loss, small-object masking, piece-wise pose):

  python -m jdepth.train --config configs/hrdepth_plus_demo.py --workdir runs/hrdepth_plus_demo

Compare its median-scaled test table with configs/demo_panoptic.py (the panoptic branch alone,
ResNet-18, at 1/100 of the paper's weights, which this one keeps).
"""

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def get_config():
    config = sibling(__file__, "demo").get_config()
    return panoptic_config.enable_paper_components(
        sibling(__file__, "hrdepth_plus").add_student(config))
