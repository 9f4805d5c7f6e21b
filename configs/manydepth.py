"""ManyDepth (MR, ResNet-18, 640x192, frames -1 and 0 for matching) on KITTI raw, Eigen-Zhou split.

  python -m jdepth.train --config configs/manydepth.py --workdir runs/manydepth \
      --config.data.root=/data/kitti_raw --config.data.split_dir=splits/eigen_zhou \
      --config.data.test_split=splits/eigen/test_files.txt
  python -m jdepth.evaluate --workdir runs/manydepth ... [--matching_mode static|zero_cost_volume]
      [--teacher]

Reference: KITTI Eigen AbsRel 0.098 (manydepth README, ImageNet weights), 20 epochs, batch 12,
teacher and pose frozen after epoch 15. Multi-scale feature fusion (Shyam et al. Sec. 3.5,
jdepth/models/msff.py): --config.model.msff=True.
Cost: a CPU step at 640x192, batch 12 and the memory it needs are measured by
`python tools/benchmark.py --config configs/manydepth.py` (BENCHMARKS.md).
"""

from ml_collections import config_dict

from jdepth.config_files import sibling


def add_manydepth(config):
    """Turns a Monodepth2-family config into the ManyDepth recipe (data and budget untouched)."""
    config.recipe = "manydepth"
    config.issl.enabled = False  # no ISSL plug-in in this recipe
    config.loss.v1_multiscale = False  # full-res multiscale, as the reference

    m = config.model
    # Multi-frame network: "resnet" (ManyDepthNet, the reference) or "hrnet" (HRNet-18 + DIFFNet
    # decoder, jdepth/models/manydepth_hrnet.py; configs/manydepth_plus.py). The mono teacher has
    # its own switch, mono_arch (jdepth/training/manydepth.py `teacher_config`).
    m.depth_arch = "resnet"
    m.mono_arch = "resnet"
    m.hrnet_normalize_input = True  # (x - 0.45) / 0.225 for HRNet too (DIFFNet: False)
    m.num_depth_bins = 96
    m.depth_binning = "linear"  # or "inverse" (uniform in 1/depth)
    m.matching_border = 2  # cost-volume validity border, matching pixels
    m.msff = False  # multi-scale feature fusion of the matching features (DESIGN.md item 6)
    m.cost_volume_gradient = False  # reference: no gradient through the matching
    # Sweep the 96 bins 8 at a time (same numbers): an earlier measurement at 640x192, batch 12 on
    # CPU gave 7.4 instead of 13.1 GiB and a faster step; 0 sweeps all bins at once. Current cost
    # of the step: BENCHMARKS.md.
    m.bins_per_chunk = 8

    c = config.manydepth = config_dict.ConfigDict()
    c.freeze_teacher_epoch = 15
    c.freeze_teacher_step = -1  # >= 0 overrides the epoch (0: teacher and pose frozen from start)
    # The teacher's photometric loss: "masked_mean" over the pixels the reprojection wins (the
    # reference) or "min", Monodepth2's mean of min(reprojection, identity) (manydepth_demo.py).
    c.teacher_reduction = "masked_mean"
    # The released code re-creates Adam + StepLR at the freeze, so the multi-frame network never
    # sees the decay (jdepth/training/teacher_freeze.py); ManyDepth+ sets False (the paper's x0.1).
    c.reset_optimizer_at_freeze = True
    c.matching_augmentation = True
    c.static_camera_prob = 0.25
    c.zero_cost_volume_prob = 0.25
    c.motion_masking = True  # consistency mask also needs cost-volume depth within 2x of teacher
    c.bins_init_min = 0.1
    c.bins_init_max = 10.0
    c.bins_momentum = 0.99
    # > 0: the bins follow the teacher for this many steps even when it is frozen (fine-tuning
    # from a trained teacher frozen at epoch 0; jdepth/training/manydepth.next_depth_bins). 0: the
    # reference.
    c.bins_track_steps = 0
    c.bins_margin_min = 0.9
    c.bins_margin_max = 1.1

    config.eval.teacher = False  # True: evaluate the mono teacher (jdepth.evaluate --teacher)
    return config


def get_config():
    return add_manydepth(sibling(__file__, "monodepth2").get_config())
