"""The grain pipeline and its on-device half, on the synthetic KITTI tree."""

import os
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth.data import device_transforms, kitti, pipeline


def _cfg(root, **kw):
    return pipeline.PipelineConfig(root=root, height=64, width=96, **kw)


def _split(root, name="train"):
    return os.path.join(root, "splits", f"{name}_files.txt")


def test_batch_layout_and_dtypes(synthetic_root):
    cfg = _cfg(synthetic_root, load_panoptic=True, load_velocity=True)
    ds = pipeline.make_dataset(cfg, _split(synthetic_root), batch_size=2, seed=0)
    batch = ds[0]
    assert batch["images"].shape == (2, 3, 64, 96, 3) and batch["images"].dtype == np.uint8
    assert batch["K"].shape == (2, 4, 4, 4) and batch["inv_K"].shape == (2, 4, 4, 4)
    assert batch["panoptic"].shape == (2, 3, 64, 96) and batch["velocity"].shape == (2, 3)
    np.testing.assert_allclose(batch["K"] @ batch["inv_K"], np.broadcast_to(np.eye(4), (2, 4, 4, 4)),
                               atol=1e-5)
    # Scale s halves the focal lengths and image size (synthetic fx = 0.58 W, fy = 1.92 H).
    unflipped = int(np.argmin(batch["flipped"])) if not batch["flipped"].all() else None
    if unflipped is not None:
        np.testing.assert_allclose(batch["K"][unflipped, 0, 0, 0], 0.58 * 96, rtol=1e-6)
        np.testing.assert_allclose(batch["K"][unflipped, 2, 1, 1], 1.92 * 64 / 4, rtol=1e-6)
    assert np.all(batch["velocity"] > 1.0)  # the ego car drives at ~10 m/s


def test_deterministic_and_resumable(synthetic_root):
    cfg = _cfg(synthetic_root)
    ds = pipeline.make_dataset(cfg, _split(synthetic_root), batch_size=2, seed=3)
    it = pipeline.make_iterator(ds)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    again = pipeline.make_iterator(pipeline.make_dataset(cfg, _split(synthetic_root), batch_size=2, seed=3))
    assert all(np.array_equal(a["images"], b["images"]) for a, b in zip(first, [next(again) for _ in range(3)]))
    resumed = pipeline.make_iterator(pipeline.make_dataset(cfg, _split(synthetic_root), batch_size=2, seed=3))
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(3)]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = pipeline.make_dataset(cfg, _split(synthetic_root), batch_size=2, seed=4)
    assert not all(np.array_equal(first[i]["index"], other[i]["index"]) for i in range(3))


def test_flip_mirrors_images_labels_and_principal_point(synthetic_root):
    cfg = _cfg(synthetic_root, flip_prob=1.0, load_panoptic=True)
    ref_cfg = _cfg(synthetic_root, flip_prob=0.0, load_panoptic=True)
    record = pipeline.KittiFrames(synthetic_root, _split(synthetic_root))[0]
    flipped = pipeline.load_sample(record, np.random.default_rng(0), cfg, train=True)
    plain = pipeline.load_sample(record, np.random.default_rng(0), ref_cfg, train=True)
    assert flipped["flipped"] and not plain["flipped"]
    np.testing.assert_array_equal(flipped["images"], plain["images"][:, :, ::-1])
    np.testing.assert_array_equal(flipped["panoptic"], plain["panoptic"][:, :, ::-1])
    for s in range(4):
        w = 96 // 2**s
        assert flipped["K"][s, 0, 2] == pytest.approx((w - 1) - plain["K"][s, 0, 2])


def test_eval_mode_has_no_augmentation(synthetic_root):
    ds = pipeline.make_dataset(_cfg(synthetic_root), _split(synthetic_root, "test"), batch_size=3,
                               seed=0, train=False)
    batch = ds[0]
    assert not batch["flipped"].any() and np.all(batch["jitter"] == 0)
    np.testing.assert_array_equal(batch["index"], [0, 1, 2])


def test_color_jitter_is_shared_by_all_frames():
    rng = np.random.default_rng(0)
    frame = rng.random((1, 8, 8, 3)).astype(np.float32)
    frames = jnp.asarray(np.repeat(frame, 3, axis=0))
    out = device_transforms.color_jitter(frames, jnp.array([1.0, 1.2, 0.8, 1.1, 0.05]))
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    assert float(jnp.max(jnp.abs(out[0] - frames[0]))) > 0.02
    unchanged = device_transforms.color_jitter(frames, jnp.array([0.0, 1.2, 0.8, 1.1, 0.05]))
    np.testing.assert_array_equal(unchanged, frames)
    # Identity factors leave the image as it is (HSV round trip included).
    same = device_transforms.color_jitter(frames, jnp.array([1.0, 1.0, 1.0, 1.0, 0.0]))
    np.testing.assert_allclose(same, frames, atol=1e-5)


def test_brightness_contrast_saturation_hand_values():
    grey = jnp.full((1, 2, 2, 3), 0.5)
    out = device_transforms.color_jitter(grey, jnp.array([1.0, 1.2, 1.0, 1.0, 0.0]))
    np.testing.assert_allclose(out, 0.6, atol=1e-6)  # brightness multiplies
    # Contrast blends towards the mean grey: 0.2 and 0.8 around 0.5 with factor 0.5 -> 0.35, 0.65.
    img = jnp.array([[[[0.2] * 3, [0.8] * 3]]])
    out = device_transforms.color_jitter(img, jnp.array([1.0, 1.0, 0.5, 1.0, 0.0]))
    np.testing.assert_allclose(out[0, 0, :, 0], [0.35, 0.65], atol=1e-6)
    # Saturation 0 gives the luma grey level 0.299 R + 0.587 G + 0.114 B.
    red = jnp.array([[[[1.0, 0.0, 0.0]]]])
    out = device_transforms.color_jitter(red, jnp.array([1.0, 1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_allclose(out[0, 0, 0], [0.299] * 3, atol=1e-6)


def _pixels_with_ties(rng, n):
    """[n, 3] colours in [0, 1], most of them with tied channels (where the hue branch is chosen)."""
    x = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    k = n // 8
    x[0 * k:1 * k, 1] = x[0 * k:1 * k, 0]  # r == g
    x[1 * k:2 * k, 2] = x[1 * k:2 * k, 1]  # g == b
    x[2 * k:3 * k, 2] = x[2 * k:3 * k, 0]  # r == b
    x[3 * k:4 * k] = x[3 * k:4 * k, :1]  # greys (all equal)
    x[4 * k:5 * k] = rng.integers(0, 2, (k, 3))  # saturated: 0 / 1 corners
    x[5 * k:6 * k] = rng.integers(0, 256, (k, 3)) / 255.0  # uint8 levels, many ties
    return rng.permutation(x)  # the rest stay random; brightness > 1 clips many to 1.0 ties


def test_color_jitter_jitted_equals_eager_including_ties():
    """XLA fuses the jitter with the RGB -> HSV conversion; the hue branch must not depend on how
    the fusions round (before the fix 0.47 % of these pixels were off by up to 0.93)."""
    rng = np.random.default_rng(0)
    samples, frames = 4, 2
    images = _pixels_with_ties(rng, 10_000).reshape(samples, frames, 25, 50, 3)
    jitter = np.stack([np.ones(samples), *(rng.uniform(0.8, 1.2, samples) for _ in range(3)),
                       rng.uniform(-0.1, 0.1, samples)], axis=1).astype(np.float32)
    jitted = jax.jit(jax.vmap(device_transforms.color_jitter))(images, jitter)
    with jax.disable_jit():
        eager = jax.vmap(device_transforms.color_jitter)(jnp.asarray(images), jnp.asarray(jitter))
    # The floor: jit contracts the saturation blend into FMAs (1-2 ulp from eager), which the
    # HSV round trip amplifies to ~1e-6; a wrong hue branch costs > 0.1.
    assert float(jnp.max(jnp.abs(jitted - eager))) <= 2e-6


def test_rgb_to_hsv_resolves_ties_as_torchvision():
    """On tied channels the hue formula is r's, then g's (torchvision/PIL); the value is exact."""
    torch = pytest.importorskip("torch")
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    try:
        from torchvision.transforms import _functional_tensor as tv
    except Exception as e:  # noqa: BLE001 - any import failure means "no reference here"
        pytest.skip(f"torchvision not importable: {e}")
    rgb = _pixels_with_ties(np.random.default_rng(1), 10_000)
    ours = np.asarray(jax.jit(device_transforms._rgb_to_hsv)(rgb))
    ref = tv._rgb2hsv(torch.from_numpy(rgb.T[:, :, None].copy())).numpy()[:, :, 0].T
    # Hue is circular: 0 and 1 are the same colour.
    hue = np.abs(ours[:, 0] - ref[:, 0])
    np.testing.assert_allclose(np.minimum(hue, 1 - hue), 0, atol=1e-6)
    np.testing.assert_allclose(ours[:, 1:], ref[:, 1:], atol=1e-6)


def test_missing_neighbour_and_corrupt_frame_name_the_file(synthetic_root, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(synthetic_root, root)
    ref = kitti.read_split_file(_split(root))[0]
    cfg = _cfg(root)
    prev = kitti.image_path(root, ref, offset=-1)
    os.remove(prev)
    with pytest.raises(FileNotFoundError, match="sequence boundary"):
        pipeline.load_sample((0, ref), np.random.default_rng(0), cfg, train=True)
    # 'clamp' repeats the centre frame instead.
    clamped = pipeline.load_sample((0, ref), np.random.default_rng(0), _cfg(root, on_missing="clamp"),
                                   train=False)
    np.testing.assert_array_equal(clamped["images"][1], clamped["images"][0])
    # A frame no call has decoded yet (decoded frames are cached per process).
    other = kitti.read_split_file(_split(root))[4]
    target = kitti.image_path(root, other)
    with open(target, "r+b") as f:
        f.truncate(200)
    with pytest.raises(kitti.DataError, match=os.path.basename(target)):
        pipeline.load_sample((4, other), np.random.default_rng(0), cfg, train=True)
