"""Shared pytest fixtures."""

import os

# Tests run on the CPU; two host devices let the pmap tests run everywhere. This must be set
# before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib.util
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
    """get_config() of configs/<name>.py, loaded by path as ml_collections does."""
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def student_optimizer(lr: float | None = None, scale_lr_scale: float | None = None):
    """The optimizer `train` builds for Student-II (configs/hrdepth_pp_demo.py, with its global
    log-scale group), at a constant learning rate (`lr`: the config's when None)."""
    from jdepth.training.state import make_optimizer

    optim = load_config("hrdepth_pp_demo").optim
    optim.decay_epochs = ()
    if lr is not None:
        optim.lr = lr
    if scale_lr_scale is not None:
        optim.scale_lr_scale = scale_lr_scale
    return make_optimizer(optim, steps_per_epoch=10)


def load_tool(name: str):
    """tools/<name>.py as a module (registered in sys.modules, as dataclasses there need)."""
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tiny_config(height: int = 64, width: int = 96, batch_size: int = 4):
    """The Monodepth2 recipe at a tiny resolution for fast tests."""
    config = load_config("monodepth2")
    config.data.height, config.data.width = height, width
    config.train.batch_size = batch_size
    config.train.progress_bar = False
    return config


def random_batch(config, batch_size: int, seed: int = 0) -> dict:
    """A pipeline-shaped batch of smooth random images (same keys and dtypes as the grain one)."""
    rng = np.random.default_rng(seed)
    h, w = config.data.height, config.data.width
    f = len(config.data.frame_ids)
    base = rng.integers(0, 255, size=(batch_size, 1, h // 4, w // 4, 3)).astype(np.float32)
    images = np.repeat(np.repeat(base, 4, axis=2), 4, axis=3)
    shifts = [np.roll(images, s, axis=3) for s in range(f)]
    images = np.concatenate(shifts, axis=1).clip(0, 255).astype(np.uint8)
    K = np.array([[0.58 * w, 0, w / 2, 0], [0, 1.92 * h, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                 np.float32)
    ks = np.stack([K * np.array([[1 / 2**s], [1 / 2**s], [1], [1]], np.float32) for s in range(4)])
    for s in range(4):
        ks[s, 2, 2] = ks[s, 3, 3] = 1.0
    inv = np.linalg.inv(ks).astype(np.float32)
    jitter = np.tile(np.array([1, 1.1, 0.9, 1.05, 0.02], np.float32), (batch_size, 1))
    return {
        "images": images,
        "K": np.broadcast_to(ks, (batch_size, 4, 4, 4)).copy(),
        "inv_K": np.broadcast_to(inv, (batch_size, 4, 4, 4)).copy(),
        "jitter": jitter,
        "flipped": np.zeros(batch_size, bool),
        "index": np.arange(batch_size, dtype=np.int32),
    }


def pytest_collection_modifyitems(config, items):
    """`heavy` tests run only with JDEPTH_HEAVY_TESTS=1 (see the marker in pyproject.toml)."""
    if os.environ.get("JDEPTH_HEAVY_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="heavy: set JDEPTH_HEAVY_TESTS=1 to run (several GB, minutes)")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def fast_compiles():
    """Halves XLA compile time for small programs (as flax's imagenet tests do); a module opts in
    with `pytestmark = pytest.mark.usefixtures("fast_compiles")`."""
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def tiny():
    return tiny_config()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny synthetic KITTI tree (3 drives x 10 frames at 96x64), generated once per session."""
    from jdepth.data import synthetic

    root = tmp_path_factory.mktemp("synthetic_kitti")
    synthetic.make_dataset(str(root), seed=0, drives=3, frames=10, width=96, height=64)
    return str(root)
