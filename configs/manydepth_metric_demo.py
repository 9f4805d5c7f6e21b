"""The metric teacher of the two-stage flow, CPU-sized: configs/manydepth_demo.py + speed loss.

  python -m jdepth.train --config configs/manydepth_metric_demo.py --workdir runs/teacher_metric
  python -m jdepth.train --config configs/hrdepth_pp_metric_demo.py --workdir runs/student_metric \
      --config.distill.teacher_workdir=runs/teacher_metric

DESIGN.md item 8: the oxts forward speed (the synthetic set writes it like KITTI) times the frame
interval is the metric length of the camera translation; `loss.velocity_weight` penalises the
difference (jdepth/losses/velocity.py, PackNet-SfM's 0.05), so the pose net and, through the
photometric loss, the depth nets become metric. At 258 steps that works only when the outputs
start near metric values (jdepth/training/metric_init.py): depth at `model.init_depth` = 10 m
and translation in metres (`model.pose_translation_scale` = 1). The cost volume's adaptive range
starts at metric values too (the reference's 0.1-10 suits its sigmoid(0) start of 0.2 m).
"""

from jdepth.config_files import sibling


def add_metric(config):
    """Speed supervision and the metric output parametrisation, on any Monodepth2-family config."""
    config.data.load_velocity = True
    config.loss.velocity_weight = 0.05
    config.model.init_depth = 10.0
    config.model.pose_translation_scale = 1.0
    return config


def get_config():
    config = add_metric(sibling(__file__, "manydepth_demo").get_config())
    config.manydepth.bins_init_min = 1.0
    config.manydepth.bins_init_max = 60.0
    return config
