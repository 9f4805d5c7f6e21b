"""HRDepth++ (Student-II, Shyam et al. Sec. 3.4, 4.2.3): HRDepth+ with the global scale head,
distilled from a frozen multi-frame teacher; absolute depth = gamma x depth, NO median scaling.

  python -m jdepth.train --config configs/manydepth.py --workdir runs/teacher ...
  python -m jdepth.train --config configs/hrdepth_pp.py --workdir runs/hrdepth_pp \
      --config.distill.teacher_workdir=runs/teacher \
      --config.data.root=/data/kitti_raw --config.data.split_dir=splits/eigen_zhou \
      --config.data.test_split=splits/eigen/test_files.txt

Paper: KITTI Eigen AbsRel 0.090 without median scaling (teacher: ManyDepth+, 0.086). The teacher
must share the resolution and have its lookup frame (-1) in data.frame_ids. Its weights are kept
in the student's state (saved with its checkpoints); building the student's state, also for
evaluation, reads the teacher workdir's config.json (jdepth/training/student.py).
"""

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def get_config():
    config = sibling(__file__, "monodepth2").get_config()
    return panoptic_config.enable_paper_components(
        sibling(__file__, "hrdepth_plus").add_student(config, scale_aware=True))
