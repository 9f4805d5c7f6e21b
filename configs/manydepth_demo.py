"""ManyDepth on the synthetic KITTI set with exactly the data, resolution and budget of demo.py.

  python -m jdepth.train --config configs/manydepth_demo.py --workdir runs/manydepth_demo

configs/demo.py (Monodepth2) and this config differ only in the recipe, so their test tables
compare the two methods at the same number of steps. The teacher and pose freeze at epoch 5 of 6,
where demo.py decays its learning rate, as the reference freezes at 15 of 20 where StepLR decays.
A ManyDepth step costs more wall time than a Monodepth2 step (two ResNet-18 depth networks and the
cost volume); the budget here is steps, as in the reference comparisons.
"""

import importlib.util
import os


def _module(name):
    # Loaded by path: config files are run by ml_collections, not imported as a package.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"jdepth_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    config = _module("manydepth").add_manydepth(_module("demo").get_config())
    config.manydepth.freeze_teacher_epoch = 5
    return config
