"""Tests for jdepth/interop/stablehlo.py and tools/export_stablehlo.py: the depth network as a
serialised StableHLO artifact (jax.export) that reloads without jdepth and predicts exactly what
the live DepthPredictor predicts.

Weights are random numpy fills (test_interop's `_random_variables`: no 15 s of flax init compiles)
of the Monodepth2 ResNet-18 networks at 64x64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jdepth.inference import DepthPredictor
from jdepth.interop import stablehlo
from jdepth.models.depth_decoder import DepthNet
from jdepth.models.pose_net import PoseNet

from conftest import load_config, tiny_config
from test_interop import _random_variables, _tool

H, W = 64, 64
# Against the live DepthPredictor. Not bit-exact: its jit takes the weights as arguments, while in
# the artifact they are constants that XLA folds (BatchNorm into the convolutions), which rounds
# float32 differently; measured up to 5e-5 relative here, as much as the live jit differs from
# itself compiled with the weights bound (`disparity_fn`). Against that, the artifact is exact.
RTOL, ATOL = 1e-4, 1e-6

pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def variables():
    """{params, batch_stats} of the Monodepth2 recipe (depth + pose), as a workdir holds them."""
    image = jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
    depth = _random_variables(DepthNet(18), image, train=False, seed=0)
    pose = _random_variables(PoseNet(18), image, image, train=False, seed=1)
    return {
        "params": {"depth": depth["params"], "pose": pose["params"]},
        "batch_stats": {"depth": depth["batch_stats"], "pose": pose["batch_stats"]},
    }


@pytest.fixture(scope="module")
def live(variables):
    """The live predictor, three test images (uint8 and the float32 the artifact takes) and
    its disparity for them, [3, H, W]."""
    predictor = DepthPredictor(tiny_config(H, W), variables["params"], variables["batch_stats"])
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    # At the network's size preprocess() is exactly / 255 (no resize).
    floats = images.astype(np.float32) / 255.0
    return predictor, floats, predictor.predict_disparity(images, batch_size=3)


@pytest.fixture(scope="module")
def artifact(live, tmp_path_factory):
    """(path, blob, meta) of the live predictor exported with a symbolic batch."""
    blob, meta = stablehlo.export(live[0])
    path, _ = stablehlo.save(str(tmp_path_factory.mktemp("export") / "depth.jax"), blob, meta)
    return path, blob, meta


def _check_equal(out, disparity, n):
    """`out` of the artifact for the first n test images against the live disparity."""
    assert set(out) == {"disparity", "depth"}
    for value in out.values():
        assert value.shape == (n, H, W, 1) and value.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out["disparity"])[..., 0], disparity[:n],
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out["depth"])[..., 0], 1.0 / disparity[:n],
                               rtol=RTOL, atol=ATOL)
    diff = np.abs(np.asarray(out["disparity"])[..., 0] - disparity[:n])
    return f"{diff.max():.3g} abs, {(diff / disparity[:n]).max():.3g} rel"


def test_reloaded_artifact_equals_live_model_for_two_batch_sizes(live, artifact):
    _, floats, disparity = live
    path, blob, _ = artifact
    # Plain jax.export on the bytes: the batch is symbolic, the weights are inside.
    exported = jax.export.deserialize(bytearray(blob))
    (aval,) = exported.in_avals
    assert str(aval.shape[0]) == "b" and aval.shape[1:] == (H, W, 3)
    assert exported.platforms == ("cpu", "cuda")
    assert 0.01 <= float(disparity.min()) and float(disparity.max()) <= 10.0  # 1/100 .. 1/0.1
    predict = stablehlo.load(path)
    baked = jax.jit(live[0].disparity_fn())  # the live network with the weights as constants
    for n in (1, 3):
        out = predict(floats[:n])
        diff = _check_equal(out, disparity, n)
        np.testing.assert_array_equal(np.asarray(out["disparity"]), np.asarray(baked(floats[:n])))
        print(f"batch {n}: max |disparity - live| = {diff}; bit-exact to the baked jit")


def test_sidecar(live, artifact):
    path, blob, meta = artifact
    with open(path + ".json") as f:
        sidecar = json.load(f)
    assert sidecar == {**meta, "artifact_bytes": len(blob)}
    assert os.path.getsize(path) == len(blob)
    assert sidecar["recipe"] == "monodepth2" and sidecar["network"] == "depth"
    assert (sidecar["height"], sidecar["width"], sidecar["batch"]) == (H, W, "symbolic")
    assert sidecar["input"]["shape"] == ["B", H, W, 3] and sidecar["input"]["range"] == [0, 1]
    assert (sidecar["min_depth"], sidecar["max_depth"], sidecar["absolute"]) == (0.1, 100.0, False)
    assert set(sidecar["outputs"]) == {"disparity", "depth"}
    assert sidecar["jax_version"] == jax.__version__
    assert sidecar["platforms"] == ["cpu", "cuda"]


_DEPLOY = """
import json, sys, importlib.util
import numpy as np
for name in ("jdepth", "flax"):  # any import of these now fails
    sys.modules[name] = None
spec = importlib.util.spec_from_file_location("deploy", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
out = module.load(sys.argv[2])(np.load(sys.argv[3]))
np.save(sys.argv[4], np.asarray(out["disparity"]))
print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None
                        and m.split(".")[0] in ("jdepth", "flax", "optax", "orbax"))))
"""


def test_loader_runs_without_jdepth_or_flax(live, artifact, tmp_path):
    """The module file alone, in a fresh process where jdepth and flax cannot be imported."""
    _, floats, disparity = live
    np.save(tmp_path / "x.npy", floats[:2])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", _DEPLOY, stablehlo.__file__, artifact[0], str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")], check=False, env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    out = np.load(tmp_path / "y.npy")
    diff = _check_equal({"disparity": out, "depth": 1.0 / out}, disparity, 2)
    print(f"fresh process: max |disparity - live| = {diff}")


def test_fixed_batch_and_multi_frame_refusal(live, variables):
    predictor, floats, disparity = live
    blob, meta = stablehlo.export(predictor, batch_size=2, platforms=("cpu",))
    exported = jax.export.deserialize(bytearray(blob))
    assert exported.in_avals[0].shape == (2, H, W, 3) and exported.platforms == ("cpu",)
    assert meta["batch"] == 2 and meta["input"]["shape"] == [2, H, W, 3]
    with pytest.raises(ValueError, match="shape"):
        exported.call(floats)  # batch 3

    config = load_config("manydepth")
    config.data.height, config.data.width = H, W
    multi = DepthPredictor(config, {}, {}, {})  # refused before the weights are looked at
    with pytest.raises(ValueError, match=r"manydepth predicts from several frames.*teacher"):
        stablehlo.export(multi)
    # Its mono teacher is a Monodepth2 depth network: same weights, same disparity.
    config.eval.teacher = True
    teacher = DepthPredictor(config, {"mono": variables["params"]["depth"]},
                             {"mono": variables["batch_stats"]["depth"]}, {})
    blob, meta = stablehlo.export(teacher, batch_size=2, platforms=("cpu",))
    assert (meta["recipe"], meta["network"]) == ("manydepth", "mono teacher")
    out = jax.export.deserialize(bytearray(blob)).call(floats[:2])
    _check_equal(out, disparity, 2)


def test_cli_end_to_end(variables, live, tmp_path):
    """A workdir as tools/import_torch.py writes it -> tools/export_stablehlo.py -> load."""
    _, floats, disparity = live
    workdir, out = str(tmp_path / "run"), str(tmp_path / "deploy" / "md2.jax")
    _tool("import_torch").write_workdir(workdir, variables["params"], variables["batch_stats"],
                                        {"height": H, "width": W})
    tool = _tool("export_stablehlo")
    assert tool.main(["--workdir", workdir, "--output", out, "--platforms", "cpu"]) == 0
    with open(out + ".json") as f:
        sidecar = json.load(f)
    assert sidecar["source"] == {"workdir": workdir, "step": "latest"}
    assert sidecar["platforms"] == ["cpu"] and sidecar["batch"] == "symbolic"
    _check_equal(stablehlo.load(out)(floats[:2]), disparity, 2)
    # --teacher is for multi-frame recipes only.
    assert tool.main(["--workdir", workdir, "--output", out, "--teacher"]) == 2
