"""ManyDepth on the synthetic KITTI set with exactly the data, resolution and budget of demo.py.

  python -m jdepth.train --config configs/manydepth_demo.py --workdir runs/manydepth_demo

configs/demo.py (Monodepth2) and this config differ only in the recipe, so their test tables
compare the two methods at the same number of steps. The teacher and pose freeze at epoch 5 of 6,
where demo.py decays its learning rate, as the reference freezes at 15 of 20 where StepLR decays.
A ManyDepth step costs more wall time than a Monodepth2 step (two ResNet-18 depth networks and the
cost volume); the budget here is steps, as in the reference comparisons.
"""

from jdepth.config_files import sibling


def get_config():
    config = sibling(__file__, "manydepth").add_manydepth(sibling(__file__, "demo").get_config())
    config.manydepth.freeze_teacher_epoch = 5
    return config
