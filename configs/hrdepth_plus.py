"""HRDepth+ (Student-I, Shyam et al. Sec. 4.2.3): single-frame HRNet-18 + DIFFNet decoder with every
component the paper adds (the panoptic head, the instance-aware contrastive loss, small-object
masking, piece-wise pose); scale-invariant, median-scaled evaluation.

  python -m jdepth.train --config configs/hrdepth_plus.py --workdir runs/hrdepth_plus \
      --config.data.root=/data/kitti_raw --config.data.split_dir=splits/eigen_zhou \
      --config.data.test_split=splits/eigen/test_files.txt

Paper: KITTI Eigen AbsRel 0.093 (640x192, 20 epochs, Adam 1e-4, x0.1 for the last 5). The encoder
starts from scratch (DIFFNet's ImageNet HRNet weights are no longer downloadable);
`model.encoder_init='params:PATH'` takes converted weights. `add_student` is shared with
configs/hrdepth_pp.py.
"""

from ml_collections import config_dict

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def add_student(config, scale_aware: bool = False):
    """Turns a Monodepth2-family config into the student recipe (data and budget untouched).

    scale_aware=True is Student-II: the scale head, distillation from `distill.teacher_workdir`
    and absolute-depth evaluation.
    """
    config.recipe = "student"
    m = config.model
    m.depth_arch = "hrnet"  # "resnet": Monodepth2's DepthNet (an ablation)
    m.hrnet_normalize_input = True  # (x - 0.45) / 0.225 as the ResNet encoder; DIFFNet: False
    m.scale_head = scale_aware
    m.scale_head_features = 128  # hidden width of its 3x3 convs (the paper gives none)
    # gamma = exp(global_log_scale) x a per-image factor in (gamma_min, gamma_max), log-uniform in
    # the paper's sigmoid head and 1 at the start (jdepth/models/scale_head.py): the global scalar
    # is unbounded, the per-image factor one decade either way.
    m.gamma_min = 0.1
    m.gamma_max = 10.0
    # The global log-scale (one scalar: the video's scale) learns at lr x 200 on the gradient's
    # sign: at the paper's 1e-4 it moves log(gamma) by up to 0.02 per step, so a ratio of 58
    # (log 4.1) takes ~200 steps rather than ~10^4 (jdepth/training/state.py,
    # tests/test_student.py).
    config.optim.scale_lr_scale = 200.0 if scale_aware else 1.0

    d = config.distill = config_dict.ConfigDict()
    d.teacher_workdir = config_dict.placeholder(str)  # a trained manydepth(_plus) workdir
    d.teacher_step = config_dict.placeholder(int)  # None: its latest checkpoint
    d.weight = 0.5  # L1(gamma * D_student, D_teacher) (paper Sec. 4.2.3)
    # False: the distillation trains gamma only, D_s learns from the photometric loss alone (the
    # paper's one global factor). True: it also trains D_s (dense depth distillation; then the
    # split of the scale between gamma and D_s is arbitrary). jdepth/training/student.py.
    d.depth_gradient = False
    # False: L1 on depth (the paper), minimised by the D_s-weighted median of D_t / D_s, so the
    # student's farthest pixels set gamma. True: L1 on log depth, minimised by the plain median
    # ratio (jdepth/losses/distillation.py; a deviation, RESULTS.md issue 24).
    d.log_space = False

    config.eval.absolute_depth = scale_aware  # Student-II: gamma * depth, no median scaling
    return config


def get_config():
    return panoptic_config.enable_paper_components(
        add_student(sibling(__file__, "monodepth2").get_config()))
