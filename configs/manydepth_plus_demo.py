"""ManyDepth+ on the synthetic KITTI set with exactly the data, resolution and budget of
configs/manydepth_demo.py (192x64, CPU-sized; teacher frozen at epoch 5 of 6):

  python -m jdepth.train --config configs/manydepth_plus_demo.py --workdir runs/manydepth_plus_demo

The two differ only in the ManyDepth+ additions (configs/manydepth_plus.py: HRNet, MSFF, panoptic
head, contrastive loss, small-object masking, piece-wise pose, and the paper's schedule, which
gives the multi-frame network the demo's decayed learning rate (lr / 10) in its last epoch), so
their test tables compare them at the same number of steps. The synthetic set ships exact
panoptic labels. At 192x64 the cost volume runs at 48x16 and the panoptic head's stride-4 map is
48x16 (768 mask points). An HRNet step costs more CPU time and a longer first compile than a
ResNet one.
"""

from jdepth.config_files import sibling


def get_config():
    return sibling(__file__, "manydepth_plus").add_plus(sibling(__file__, "manydepth_demo").get_config())
