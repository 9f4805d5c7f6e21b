"""The panoptic label convention (DESIGN.md item 1) and the per-image targets the losses need.

Labels are Cityscapes panoptic ids over the 19 Cityscapes *train* classes, one int map per frame
(`jdepth.data.kitti.load_panoptic` decodes them, the pipeline resizes and flips them):

    stuff pixel   id = class_id                          class_id in 0..10
    thing pixel   id = class_id * 1000 + instance        class_id in 11..18

Everything else is *void*: a negative id, a class >= 19 (e.g. the 255 "ignore" label of most
Cityscapes tools) and a thing class stored without an instance (Cityscapes marks crowd regions
that way). Void pixels are never a target, an anchor or a neighbour in any loss, and are ignored
by the PQ evaluation (jdepth/eval/panoptic.py); mapping crowd to void (instead of COCO's per-class
crowd handling) keeps one rule for every consumer.

Functions here work on numpy and jax arrays alike (`class_of`, `canonical_ids`) or are jittable
(`segment_targets`, `downsample_labels`), so the pipeline, the losses and the evaluation share them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 19
LABEL_DIVISOR = 1000
# Cityscapes train ids 11..18: person, rider, car, truck, bus, train, motorcycle, bicycle.
THING_CLASSES = tuple(range(11, 19))
CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
VOID = -1
# Void pixels get this id inside `segment_targets`: it sorts after every real id, so
# `jnp.unique(..., size=M)` lists the real segments first.
_SENTINEL = np.iinfo(np.int32).max


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


def is_thing_class(class_id):
    """Whether a class id (array) is one of the 8 Cityscapes thing classes."""
    return (class_id >= THING_CLASSES[0]) & (class_id <= THING_CLASSES[-1])


def class_of(ids):
    """Class id of every pixel, VOID (-1) for void pixels (module docstring).

    Args:
      ids: int array of Cityscapes panoptic ids, any shape (numpy or jax).

    Returns:
      int32 class ids in 0..18 or -1, same shape and array type.
    """
    xp = _xp(ids)
    ids = ids.astype(xp.int32)
    cls = xp.where(ids >= LABEL_DIVISOR, ids // LABEL_DIVISOR, ids)
    void = (ids < 0) | (cls >= NUM_CLASSES) | ((ids < LABEL_DIVISOR) & is_thing_class(cls))
    return xp.where(void, VOID, cls).astype(xp.int32)


def canonical_ids(ids):
    """The ids with every void pixel set to VOID (-1), so that all void pixels compare equal."""
    xp = _xp(ids)
    return xp.where(class_of(ids) == VOID, VOID, ids.astype(xp.int32))


def segment_targets(ids: jax.Array, max_segments: int):
    """The segments of one label map as a fixed-size list (static shapes under jit).

    Args:
      ids: [H, W] int panoptic ids of one image.
      max_segments: M, the number of slots.

    Returns:
      (segment_ids [M] int32, classes [M] int32, valid [M] bool, truncated [] bool): the distinct
      non-void ids in increasing order, their classes, which slots hold a segment, and whether the
      image has more than M segments (the ones with the largest ids are then dropped; the train
      step logs the fraction of truncated images).
    """
    flat = canonical_ids(ids).reshape(-1)
    flat = jnp.where(flat == VOID, _SENTINEL, flat)
    unique = jnp.unique(flat, size=max_segments + 1, fill_value=_SENTINEL)
    segment_ids, overflow = unique[:max_segments], unique[max_segments]
    valid = segment_ids != _SENTINEL
    segment_ids = jnp.where(valid, segment_ids, VOID)
    classes = jnp.where(valid, class_of(segment_ids), VOID)
    return segment_ids, classes, valid, overflow != _SENTINEL


def downsample_labels(ids: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour label map at 1/factor resolution, pixel-centre aligned.

    Output pixel i covers input pixels [i * f, (i + 1) * f); the nearest input pixel to its centre
    is i * f + f // 2 (the rule of `jdepth.data.pipeline.resize_labels`). Labels are never
    interpolated.

    Args:
      ids: [B, H, W] int labels, H and W multiples of `factor`.
      factor: integer downsampling factor (>= 1).

    Returns:
      [B, H // factor, W // factor].
    """
    if factor == 1:
        return ids
    if ids.shape[1] % factor or ids.shape[2] % factor:
        raise ValueError(
            f"jdepth/data/panoptic_labels.py: label map {ids.shape[1:]} does not divide by {factor}"
        )
    start = factor // 2
    return ids[:, start::factor, start::factor]
