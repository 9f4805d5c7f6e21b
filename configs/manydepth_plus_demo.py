"""ManyDepth+ on the synthetic KITTI set with exactly the data, resolution and budget of
configs/manydepth_demo.py (192x64, CPU-sized; teacher frozen at epoch 5 of 6):

  python -m jdepth.train --config configs/manydepth_plus_demo.py --workdir runs/manydepth_plus_demo

The two differ only in the ManyDepth+ additions (configs/manydepth_plus.py), so their test tables
compare them at the same number of steps. The synthetic set ships exact panoptic labels. At 192x64
the cost volume runs at 48x16 and the panoptic head's stride-4 map is 48x16 (768 mask points).
An HRNet step costs more CPU time and a longer first compile than a ResNet one.
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
    return _module("manydepth_plus").add_plus(_module("manydepth_demo").get_config())
