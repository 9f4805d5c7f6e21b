"""Student-II distilled from the metric teacher (configs/manydepth_metric_demo.py), CPU-sized.

  python -m jdepth.train --config configs/manydepth_metric_demo.py --workdir runs/teacher_metric
  python -m jdepth.train --config configs/hrdepth_pp_metric_demo.py --workdir runs/student_metric \
      --config.distill.teacher_workdir=runs/teacher_metric

configs/hrdepth_pp_demo.py with the paper's panoptic-derived components off (the suite's `hrdepth_pp` entry does the
same, to halve the CPU cost) and the student's depth heads starting at 10 m like the teacher's
(jdepth/training/metric_init.py), so the scale head (gamma 1 at the start) starts near the
teacher's scale.
The student has no speed loss: its metric scale comes from the teacher through gamma, as in the
paper. Evaluation is absolute (gamma x depth, no median scaling).
"""

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def get_config():
    config = panoptic_config.disable_paper_components(
        sibling(__file__, "hrdepth_pp_demo").get_config())
    config.model.init_depth = 10.0
    return config
