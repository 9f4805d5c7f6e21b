"""HRDepth+ (Student-I) on the synthetic KITTI set with the data, resolution and budget of
configs/demo.py (192x64, CPU-sized), panoptic head and contrastive loss on:

  python -m jdepth.train --config configs/hrdepth_plus_demo.py --workdir runs/hrdepth_plus_demo

Compare its median-scaled test table with configs/demo_panoptic.py (same plug-ins, ResNet-18).
"""

import importlib.util
import os

from jdepth.training import panoptic_config


def _module(name):
    # Loaded by path: config files are run by ml_collections, not imported as a package.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"jdepth_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    config = _module("demo").get_config()
    return panoptic_config.enable(_module("hrdepth_plus").add_student(config))
