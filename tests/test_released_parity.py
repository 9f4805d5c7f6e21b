"""jdepth's Monodepth2 against the RELEASED code (the PyPI `manydepth` package's networks, layers).

The yardstick of the speed and learning comparisons (tools/released_monodepth2.py) must be the same
model as jdepth's: its weights, loaded into jdepth through jdepth/interop, give the same
disparities, poses, loss and parameter gradients. Skipped without the optional extra
(`pip install -e ".[reference]"`, part of the test extra).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

released_monodepth2 = pytest.importorskip("released_monodepth2")
try:
    torch, _, _ = released_monodepth2.import_released()
except ImportError as error:  # pragma: no cover - depends on the environment
    pytest.skip(f"released code not installed: {error}", allow_module_level=True)

from jdepth.data import device_transforms, pipeline  # noqa: E402
from jdepth.interop import checkpoints  # noqa: E402
from jdepth.training import monodepth  # noqa: E402

B, H, W = 2, 64, 96


@pytest.fixture(scope="module")
def pair():
    """The released model (seeded init) and its weights as jdepth variables, with one batch."""
    model = released_monodepth2.ReleasedMonodepth2(B, H, W, seed=3, num_threads=2)
    files = {name: {k: v.detach().numpy() for k, v in module.state_dict().items()}
             for name, module in (("encoder", model.encoder), ("depth", model.depth),
                                  ("pose_encoder", model.pose_encoder), ("pose", model.pose))}
    params, batch_stats, _ = checkpoints.from_torch(files)
    rng = np.random.default_rng(0)
    # Texture without flat areas: in a flat area a warp and the unwarped frame tie exactly, and
    # the two implementations' minimum may route the gradient to either.
    coarse = rng.integers(0, 180, (B, 3, H // 8, W // 8, 3))
    images = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    images = (images + rng.integers(0, 76, images.shape)).astype(np.uint8)
    k_norm = np.array([[0.58, 0, 0.5, 0], [0, 1.92, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    K, inv_K = pipeline.intrinsics_pyramid(k_norm, H, W, 4)
    jitter = np.tile(np.array([1, 1.1, 0.9, 1.05, 0.02], np.float32), (B, 1))
    color, color_aug, pyramid = device_transforms.prepare_images(images, jitter, 4)
    return model, params, batch_stats, (color, color_aug, pyramid, K[0], inv_K[0])


def _config():
    from jdepth.config_files import sibling

    config = sibling(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "x.py"),
                     "monodepth2").get_config()
    config.data.height, config.data.width = H, W
    return config


def test_released_networks_loss_and_gradients_match_jdepth(pair):
    model, params, batch_stats, (color, color_aug, pyramid, K, inv_K) = pair
    config = _config()
    networks = monodepth.build_networks(config)
    frames = {f: jnp.asarray(color[:, i]) for i, f in enumerate((0, -1, 1))}
    frames_aug = {f: jnp.asarray(color_aug[:, i]) for i, f in enumerate((0, -1, 1))}
    Kb = jnp.broadcast_to(jnp.asarray(K), (B, 4, 4))
    inv_Kb = jnp.broadcast_to(jnp.asarray(inv_K), (B, 4, 4))

    def objective(params):
        (disps, _), _ = networks["depth"].apply(
            {"params": params["depth"], "batch_stats": batch_stats["depth"]}, frames_aug[0],
            train=True, mutable=["batch_stats"])
        poses, _ = monodepth.predict_poses(networks["pose"], params["pose"], batch_stats["pose"],
                                           frames_aug, train=True)
        total, _ = monodepth.photometric_objective(
            disps, frames, pyramid, poses, Kb, inv_Kb, None, config)
        return total, (disps, poses)

    (total, (disps, poses)), grads = jax.value_and_grad(objective, has_aux=True)(params)

    inputs = model.tensors(color, color_aug, pyramid, np.asarray(Kb), np.asarray(inv_Kb))
    model.tie_noise_std = 0.0  # jdepth's objective above runs without tie-breaking noise
    outputs = model.forward(inputs, train=True)
    released_total = model.loss(inputs, outputs)
    for scale in range(4):
        np.testing.assert_allclose(
            outputs[("disp", scale)].detach().numpy().transpose(0, 2, 3, 1),
            np.asarray(disps[scale]), atol=2e-5, err_msg=f"disparity, scale {scale}")
    for f in (-1, 1):
        np.testing.assert_allclose(outputs[("cam_T_cam", f)].detach().numpy(),
                                   np.asarray(poses[f]), atol=2e-6, err_msg=f"pose to {f}")
    assert float(released_total) == pytest.approx(float(total), rel=1e-5)

    model.optimizer.zero_grad()
    released_total.backward()
    exported = checkpoints.to_torch(grads, batch_stats, {}, with_classifier=False)
    modules = {"encoder": model.encoder, "depth": model.depth,
               "pose_encoder": model.pose_encoder, "pose": model.pose}
    compared = 0
    for name, module in modules.items():
        for key, parameter in module.named_parameters():
            if parameter.grad is None:  # torchvision's unused classifier
                assert key.startswith("encoder.fc."), key
                continue
            ours = np.asarray(exported[name][key])
            theirs = parameter.grad.numpy()
            scale = max(float(np.abs(theirs).max()), 1e-8)
            np.testing.assert_allclose(ours, theirs, atol=2e-3 * scale, rtol=0,
                                       err_msg=f"gradient of {name}.{key}")
            compared += 1
    assert compared > 150  # every parameter of the four networks
