"""HRDepth++ (Student-II) on the synthetic KITTI set at the size of configs/demo.py: the two-stage
flow of the paper, CPU-sized.

  python -m jdepth.train --config configs/manydepth_demo.py --workdir runs/manydepth_demo
  python -m jdepth.train --config configs/hrdepth_pp_demo.py --workdir runs/hrdepth_pp_demo \
      --config.distill.teacher_workdir=runs/manydepth_demo

The test table is absolute (gamma x depth, no median scaling); its scale_ratio_median says how far
the learnt scale is from the ground truth's. The synthetic set writes oxts speeds, so a teacher
trained with --config.data.load_velocity=True --config.loss.velocity_weight=... (DESIGN.md item 8)
has metric scale to hand down; without it the student inherits the teacher's arbitrary scale.
"""

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def get_config():
    config = sibling(__file__, "demo").get_config()
    config = sibling(__file__, "hrdepth_plus").add_student(config, scale_aware=True)
    return panoptic_config.enable_paper_components(config)
