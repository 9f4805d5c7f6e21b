"""ManyDepth+ (Shyam et al. Tab. 1, KITTI Eigen AbsRel 0.086 at 640x192): ManyDepth with an
HRNet-18 multi-frame network (DIFFNet decoder), multi-scale feature fusion of the matching
features, and every component the paper adds (panoptic_config.enable_paper_components): the
panoptic head, the instance-aware contrastive loss, small-object masking and piece-wise pose.

  python -m jdepth.train --config configs/manydepth_plus.py --workdir runs/manydepth_plus \
      --config.data.root=/data/kitti_raw --config.data.split_dir=splits/eigen_zhou \
      --config.data.test_split=splits/eigen/test_files.txt

It is the teacher of the scale-aware student (configs/hrdepth_pp.py, distill.teacher_workdir).

Choices (see jdepth/models/manydepth_hrnet.py, jdepth/training/manydepth.py and plugins.py):
  * the cost volume sits after HRNet's layer1 (256 channels at 1/4), as ManyDepth's after the
    ResNet layer1; MSFF (jdepth/models/msff.py) fuses stem1 and pooled layer1 context into it;
  * the mono teacher stays ResNet-18 (model.mono_arch; "hrnet" is the alternative): it only
    gives the consistency mask, the adaptive bins and the pose co-training until the freeze, and
    the step then compiles one HRNet instead of two (each costs minutes and GBs on CPU);
  * the panoptic head reads the multi-frame encoder's features (stem1 and the four stage-4
    branches), the contrastive loss its decoder features at 1/8, 1/4, 1/2;
  * piece-wise pose and small-object masking weight both photometric losses (teacher and
    multi-frame); the cost volume matches with the global (ego) pose;
  * the multi-frame network keeps one Adam through the teacher freeze, so its learning rate
    drops x0.1 for the last 5 epochs as the paper states (ManyDepth re-creates the optimizer at
    the freeze and never decays: manydepth.reset_optimizer_at_freeze).
Not yet: panoptic-quality evaluation of the multi-frame network (needs lookup frames in the PQ
tool).
The encoder starts from scratch: ImageNet HRNet weights are not downloadable any more; a converted
set goes in with --config.model.encoder_init=params:PATH.
"""

from jdepth.config_files import sibling
from jdepth.training import panoptic_config


def add_plus(config):
    """Turns a ManyDepth config into ManyDepth+ (data, budget and freeze step untouched)."""
    # The paper's schedule for the multi-frame network (Sec. 4.2.2: lr 1e-4 for 20 epochs, x0.1
    # for the last 5): one Adam through the freeze, where the released ManyDepth code re-creates
    # Adam and its StepLR and so never decays (configs/manydepth.py; teacher_freeze.py).
    config.manydepth.reset_optimizer_at_freeze = False
    m = config.model
    m.depth_arch = "hrnet"
    m.mono_arch = "resnet"
    m.msff = True
    # MSFF improves the features "utilized for both feature matching and cost volume computation"
    # (Shyam et al. Sec. 3.5): with the reference's detached matching it would learn only through
    # reduce_conv's input, so the cost volume back-propagates into the current frame's matching
    # features here (the lookup frame stays detached).
    m.cost_volume_gradient = True
    return panoptic_config.enable_paper_components(config)


def get_config():
    return add_plus(sibling(__file__, "manydepth").get_config())
