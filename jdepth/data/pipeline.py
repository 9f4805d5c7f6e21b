"""Grain input pipeline: KITTI frame tuples (target + neighbours) for self-supervised training.

What runs here (numpy, in grain workers) is the work that must touch files: decoding PNG/JPEG, resizing
to the training resolution, the horizontal flip, and the per-sample random draw of the colour jitter.
Applying the jitter and building the image pyramid for scales 1..3 happens on the accelerator, inside
the jitted step (`jdepth.data.device_transforms`): it is elementwise work that XLA fuses, and it keeps
the CPU workers from starving the step. Augmentation parameters are drawn ONCE per sample (shared by
all its frames, as Monodepth2 does) from grain's per-record RNG, so the stream is deterministic
given the seed, whatever the number of workers.

One element (before batching) is a dict:
  images     uint8   [F, H, W, 3]  frames in `frame_ids` order (frame 0 first), flipped if `flipped`
  K, inv_K   float32 [S, 4, 4]     pixel intrinsics for scales 0..S-1 of the training resolution
  jitter     float32 [5]           (apply, brightness, contrast, saturation, hue) factors
  flipped    bool    []
  index      int32   []            position of the frame in the split file
  panoptic   int32   [F, H, W]     Cityscapes panoptic ids (only with `load_panoptic`)
  velocity   float32 [F]           oxts forward velocity in m/s (only with `load_velocity`)
  instance_masks, instance_valid, thing_mask, dropped_mask
                                   piece-wise pose targets, matched after the flip (only with
                                   `max_instances` > 0, which needs `load_panoptic`; shapes and
                                   rules in `jdepth.data.instances`)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import grain
import numpy as np
from PIL import Image

from jdepth.data import instances, kitti


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Static description of what one training sample holds."""

    root: str
    height: int
    width: int
    frame_ids: tuple[int, ...] = (0, -1, 1)
    num_scales: int = 4
    img_ext: str | None = None  # None: auto-detect .png / .jpg per frame
    flip_prob: float = 0.5
    color_aug_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    on_missing: str = "raise"  # neighbour missing at a sequence boundary: 'raise' or 'clamp'
    load_panoptic: bool = False
    load_velocity: bool = False
    max_instances: int = 0  # > 0: piece-wise pose targets with this many instance slots
    # > 0: `small_object_mask` of frame 0 with this alpha (small-object masking alone)
    small_object_area: float = 0.0
    min_instance_area: float = 0.01  # alpha: instances below this fraction of H * W are dropped
    # Decoded, resized frames kept per process (MiB; 0: none). A frame is read as a target and as
    # a neighbour of two others every epoch; on a small dataset decoding dominates the step.
    frame_cache_mb: int = 256

    def __post_init__(self):
        if self.small_object_area > 0 and not self.load_panoptic:
            raise ValueError(
                "jdepth/data/pipeline.py: small_object_area > 0 (small-object masking) needs the "
                "panoptic labels; set load_panoptic=True (config.data.load_panoptic)"
            )
        if self.max_instances > 0 and not self.load_panoptic:
            raise ValueError(
                "jdepth/data/pipeline.py: max_instances > 0 (piece-wise pose) needs the panoptic "
                "labels; set load_panoptic=True (config.data.load_panoptic)"
            )


def resize_image(image: np.ndarray, height: int, width: int, path: str = "") -> np.ndarray:
    """Resizes uint8 [h, w, C] to [height, width, C] with PIL's Lanczos filter (Monodepth2's ANTIALIAS)."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map [h, w] (labels must never be interpolated)."""
    h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    # Pixel-centre aligned nearest sampling, the same rule PIL's NEAREST uses.
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def intrinsics_pyramid(
    k_norm: np.ndarray, height: int, width: int, num_scales: int, flipped: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel intrinsics per scale from normalised intrinsics.

    Args:
      k_norm: [4, 4] intrinsics divided by the original image size (row 0 by W, row 1 by H).
      height, width: training resolution at scale 0.
      num_scales: number of scales; scale s has resolution (height // 2^s, width // 2^s).
      flipped: the image was mirrored horizontally. The reference leaves K unchanged because it assumes
        a centred principal point; we mirror it instead. With integer pixel centres, x -> w - 1 - x, so
        cx -> w - 1 - cx at each scale, which is exact for any camera.

    Returns:
      (K [S, 4, 4], inv_K [S, 4, 4]) float32.
    """
    ks, inv_ks = [], []
    for s in range(num_scales):
        w = width // 2**s
        k = kitti.scale_intrinsics(k_norm, w, height // 2**s)
        if flipped:
            k[0, 2] = (w - 1) - k[0, 2]
        ks.append(k)
        inv_ks.append(np.linalg.inv(k))
    return np.stack(ks).astype(np.float32), np.stack(inv_ks).astype(np.float32)


def draw_color_jitter(rng: np.random.Generator, cfg: PipelineConfig) -> np.ndarray:
    """One colour-jitter draw per sample: [apply, brightness, contrast, saturation, hue]."""
    apply = float(rng.random() < cfg.color_aug_prob)
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    h = rng.uniform(-cfg.hue, cfg.hue)
    return np.array([apply, b, c, s, h], dtype=np.float32)


class KittiFrames:
    """Random-access source over the lines of a split file; each record is a FrameRef + its index.

    Building it checks that the split is non-empty and parses the calibration of every drive and
    camera it uses (`kitti.load_camera_calibration`, which also refuses unusable intrinsics), so a
    bad calibration fails here, naming the file, not in a worker minutes later. The full check of
    every frame is the train loop's validation pass (jdepth/data/validate.py).
    """

    def __init__(self, root: str, split_file: str):
        self.root = root
        self.split_file = split_file
        self.refs = kitti.read_split_file(split_file)
        if not self.refs:
            raise kitti.DataError(f"{split_file}: split file has no frames")
        for date_dir, cam in sorted({(kitti.calib_dir(root, r), r.camera) for r in self.refs}):
            _normalised_intrinsics(date_dir, cam)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int):
        return int(index), self.refs[index]


@functools.lru_cache(maxsize=256)
def _normalised_intrinsics(calib_dir: str, cam: int) -> np.ndarray:
    return kitti.normalised_intrinsics(kitti.load_camera_calibration(calib_dir, cam))


def draw_augmentation(rng: np.random.Generator | None, cfg: PipelineConfig, train: bool):
    """The per-sample random draws, in a fixed order (flip, then jitter) every source shares."""
    if not train:
        return False, np.zeros(5, np.float32)
    flipped = bool(rng.random() < cfg.flip_prob)
    return flipped, draw_color_jitter(rng, cfg)


def assemble_sample(
    index: int,
    images: list[np.ndarray],
    k_norm: np.ndarray,
    flipped: bool,
    jitter: np.ndarray,
    cfg: PipelineConfig,
    panoptic: list[np.ndarray] | None = None,
    velocity: list[float] | None = None,
) -> dict:
    """Builds the element dict (module docstring) from decoded frames at the training resolution.

    Args:
      index: position of the frame in the split.
      images: uint8 [H, W, 3] per frame id, already resized.
      k_norm: [4, 4] normalised intrinsics of the drive.
      flipped, jitter: the sample's draws (`draw_augmentation`).
      panoptic: int [H, W] per frame id (resized), when `cfg.load_panoptic`.
      velocity: forward velocity per frame id, when `cfg.load_velocity`.
    """
    stacked = np.stack(images)
    if flipped:
        stacked = stacked[:, :, ::-1]
    k, inv_k = intrinsics_pyramid(k_norm, cfg.height, cfg.width, cfg.num_scales, flipped)
    sample = {
        "images": np.ascontiguousarray(stacked),
        "K": k,
        "inv_K": inv_k,
        "jitter": jitter,
        "flipped": np.bool_(flipped),
        "index": np.int32(index),
    }
    if cfg.load_panoptic:
        labels = np.stack(panoptic).astype(np.int32)
        sample["panoptic"] = np.ascontiguousarray(labels[:, :, ::-1] if flipped else labels)
        if cfg.max_instances > 0:  # on the flipped labels: masks stay aligned with the images
            sample.update(instances.match_instances(
                sample["panoptic"], cfg.max_instances, cfg.min_instance_area))
        if cfg.small_object_area > 0:
            sample["small_object_mask"] = instances.small_object_mask(
                sample["panoptic"], cfg.small_object_area)
    if cfg.load_velocity:
        sample["velocity"] = np.asarray(velocity, np.float32)
    return sample


class _FrameCache:
    """Decoded frames at the training resolution, by (path, height, width), up to a byte budget
    (oldest out first). One per process: grain workers each keep their own."""

    def __init__(self):
        self._frames: dict[tuple, np.ndarray] = {}
        self._bytes = 0

    def get(self, path: str, height: int, width: int, budget_mb: int) -> np.ndarray:
        key = (path, height, width)
        frame = self._frames.get(key)
        if frame is None:
            frame = resize_image(kitti.load_image(path), height, width, path)
            frame.setflags(write=False)  # shared by every sample that reads it
            budget = budget_mb * 2**20
            if frame.nbytes <= budget:
                while self._bytes + frame.nbytes > budget:
                    self._bytes -= self._frames.pop(next(iter(self._frames))).nbytes
                self._frames[key] = frame
                self._bytes += frame.nbytes
        return frame


_FRAMES = _FrameCache()


def load_sample(record, rng: np.random.Generator, cfg: PipelineConfig, train: bool) -> dict:
    """Reads and augments one sample (grain `random_map` body). See the module docstring."""
    index, ref = record
    flipped, jitter = draw_augmentation(rng, cfg, train)
    images, panoptic, velocity = [], [], []
    for offset in cfg.frame_ids:
        frame_index = kitti.neighbour_index(cfg.root, ref, offset, on_missing=cfg.on_missing)
        path = kitti.image_path(cfg.root, ref, frame_index=frame_index, ext=cfg.img_ext)
        images.append(_FRAMES.get(path, cfg.height, cfg.width, cfg.frame_cache_mb))
        if cfg.load_panoptic:
            label = kitti.load_panoptic(kitti.panoptic_path(cfg.root, ref, frame_index=frame_index))
            panoptic.append(resize_labels(label, cfg.height, cfg.width))
        if cfg.load_velocity:
            oxts = kitti.read_oxts(kitti.oxts_path(cfg.root, ref, frame_index=frame_index))
            velocity.append(oxts["vf"])
    k_norm = _normalised_intrinsics(kitti.calib_dir(cfg.root, ref), kitti.side_to_camera(ref.side))
    return assemble_sample(index, images, k_norm, flipped, jitter, cfg, panoptic, velocity)


def make_dataset(
    cfg: PipelineConfig,
    split_file: str,
    *,
    batch_size: int,
    seed: int,
    train: bool = True,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """Builds the batched MapDataset.

    Training shuffles with a fresh permutation per epoch (grain reshuffles per repetition), draws
    augmentations from the per-record RNG, and drops the last partial batch. Evaluation keeps the
    split order and every frame.

    With `shard_count` > 1 (one shard per process of a multi-process run), element i of the
    dataset is rows [shard_index * b, (shard_index + 1) * b) of global batch i, b = batch_size /
    shard_count. The samples, their augmentation draws and their order are those of the
    one-process dataset (`shard_sliced`), so a run's data does not depend on its process count,
    and an iterator position (grain's `next_index`) means the same global step for any count.
    """
    source = KittiFrames(cfg.root, split_file)
    ds = grain.MapDataset.source(source)
    if train:
        ds = ds.seed(seed).shuffle()
        ds = ds.repeat(num_epochs)
        ds = ds.random_map(functools.partial(load_sample, cfg=cfg, train=True))
    else:
        ds = ds.map(functools.partial(load_sample, rng=None, cfg=cfg, train=False))
    if shard_count == 1:
        return ds.batch(batch_size, drop_remainder=train)
    return shard_sliced(ds, batch_size, shard_index, shard_count, drop_remainder=train)


def shard_sliced(ds: grain.MapDataset, batch_size: int, shard_index: int, shard_count: int,
                 drop_remainder: bool = True) -> grain.MapDataset:
    """Shard `shard_index`'s rows of each global batch of `batch_size` elements of `ds`.

    Batching `ds` by `batch_size / shard_count` makes global batch i the local batches
    i * shard_count ... i * shard_count + shard_count - 1, in shard order; taking every
    `shard_count`-th from `shard_index` gives this shard's part. Random maps upstream keep their
    per-record seeds (the record index in `ds` is unchanged), and grain reads only the selected
    records: no process decodes another's samples.

    Raises:
      ValueError: when `batch_size` does not divide over `shard_count` or the index is outside it.
    """
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
    if batch_size % shard_count:
        raise ValueError(f"global batch size {batch_size} does not divide over {shard_count} "
                         "processes (config.train.batch_size)")
    local = ds.batch(batch_size // shard_count, drop_remainder=drop_remainder)
    return local[shard_index::shard_count]


def make_iterator(ds: grain.MapDataset, num_workers: int = 0, prefetch: int = 2):
    """Turns a MapDataset into a checkpointable iterator, with `num_workers` processes if > 0."""
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)


def split_length(split_file: str) -> int:
    """Number of frames listed in a split file."""
    return len(kitti.read_split_file(split_file))


def frames_of(batch: dict, frame_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """Splits a batch's `images` [B, F, H, W, 3] into {frame_id: [B, H, W, 3]}."""
    return {f: batch["images"][:, i] for i, f in enumerate(frame_ids)}
