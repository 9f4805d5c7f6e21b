"""ManyDepth on the synthetic KITTI set with exactly the data, resolution and budget of demo.py.

  python -m jdepth.train --config configs/manydepth_demo.py --workdir runs/manydepth_demo

configs/demo.py (Monodepth2) and this config differ only in the recipe, so their test tables
compare the two methods at the same number of steps. The teacher and pose freeze at epoch 5 of 6,
where demo.py decays its learning rate, as the reference freezes at 15 of 20 where StepLR decays.
A ManyDepth step costs more wall time than a Monodepth2 step (two ResNet-18 depth networks and the
cost volume); the budget here is steps, as in the reference comparisons.

The teacher's loss is Monodepth2's (manydepth.teacher_reduction="min") and its initial values are
the Monodepth2 recipe's (jdepth/training/manydepth.py `init_variables`), so the teacher trains as
demo.py's depth net does (test AbsRel 0.292 vs 0.286) and the difference between the two test
tables is the multi-frame network's. From other initial values the from-scratch teacher saturated
at the 0.1 m minimum depth by step 50, with either teacher loss, and the cost volume collapsed with
it. At 192x64 the cost volume itself carries little: a 10% depth error moves a pixel's projection
by a median 0.06 matching pixels on the test drive (tools/cost_volume_accuracy.py), so this
config tests the recipe's machinery, not ManyDepth's accuracy, which needs KITTI-sized images.
"""

from jdepth.config_files import sibling


def get_config():
    config = sibling(__file__, "manydepth").add_manydepth(sibling(__file__, "demo").get_config())
    config.manydepth.freeze_teacher_epoch = 5
    config.manydepth.teacher_reduction = "min"
    return config
