"""Instance targets of piece-wise pose (DESIGN.md item 4): matched "thing" masks across frames.

Runs in the data pipeline (numpy, grain workers) on the panoptic ids of one sample, AFTER the
horizontal flip, so masks, images and intrinsics are mirrored together. The rules:

* Instances are the thing segments (Cityscapes train classes 11..18 with an instance number,
  `jdepth.data.panoptic_labels`). An instance with fewer than `min_area_fraction * H * W` pixels
  is dropped in every frame (paper Sec. 3.3, alpha = 1 %: distant objects, unreliable poses).
* Target slots: the kept instances of frame 0, largest first (ties: smaller panoptic id first),
  at most `max_instances` (M) of them; the rest are dropped like small ones. Area order makes the
  slot order independent of the flip and of instance numbering.
* Matching, per source frame: greedy on mask IoU, highest IoU first, each instance used at most
  once, only between instances of the same class and only with IoU > 0 (ties: lower target slot,
  then lower source index). An instance of frame 0 without a partner keeps the global pose for
  that source frame.
* Target pixels of a thing class that are not inside a kept target instance (small, beyond M, or
  crowd regions, which carry no instance number) have no trustworthy pose; the photometric loss
  ignores them (`dropped_mask`, "masking small objects", paper Sec. 3.3 / abstract).

Output (static shapes: slots are padded with empty masks and `False` flags):

  instance_masks  bool [F, M, H, W]  mask m of frame f is the instance matched to target slot m
                                    (frame 0: the target instance itself); empty when invalid
  instance_valid  bool [F, M]        frame 0: slot m holds a target instance; frame f: it is
                                    matched in frame f (implies the frame-0 flag)
  thing_mask      bool [F, H, W]     every thing-class pixel (crowd included): masked out of the
                                    global (ego) pose net's input
  dropped_mask    bool [H, W]        frame-0 thing pixels without a piece-wise pose
"""

from __future__ import annotations

import numpy as np

from jdepth.data import panoptic_labels

KEYS = ("instance_masks", "instance_valid", "thing_mask", "dropped_mask")


def thing_mask(ids: np.ndarray) -> np.ndarray:
    """Pixels of a thing class, instance number or not (crowd), as bool, shaped like `ids`."""
    ids = np.asarray(ids, np.int64)
    raw_class = np.where(ids >= panoptic_labels.LABEL_DIVISOR, ids // panoptic_labels.LABEL_DIVISOR,
                         ids)
    return (ids >= 0) & panoptic_labels.is_thing_class(raw_class)


def frame_instances(ids: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """The kept thing instances of one frame, largest first.

    Args:
      ids: int [H, W] panoptic ids.
      min_area: minimum pixel count of a kept instance.

    Returns:
      (instance_ids [N] int64, masks bool [N, H, W]), sorted by area (descending), then id.
    """
    ids = np.asarray(ids, np.int64)
    is_instance = (panoptic_labels.class_of(ids) != panoptic_labels.VOID) & (
        ids >= panoptic_labels.LABEL_DIVISOR)
    unique, counts = np.unique(ids[is_instance], return_counts=True)
    keep = counts >= min_area
    unique, counts = unique[keep], counts[keep]
    order = np.lexsort((unique, -counts))
    unique = unique[order]
    masks = ids[None] == unique[:, None, None]
    return unique, masks


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of masks: bool [N, H, W] x bool [K, H, W] -> float64 [N, K]."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


def greedy_match(iou: np.ndarray) -> np.ndarray:
    """Greedy one-to-one assignment, highest IoU first; pairs with IoU 0 are never matched.

    Args:
      iou: float [N, K].

    Returns:
      int64 [N]: the matched column of every row, -1 for none. Ties go to the lower row, then
      the lower column (a stable sort on -IoU over row-major pairs).
    """
    n, k = iou.shape
    match = np.full(n, -1, np.int64)
    used = np.zeros(k, bool)
    order = np.argsort(-iou.reshape(-1), kind="stable")
    for flat in order:
        row, col = divmod(int(flat), k)
        if iou[row, col] <= 0:
            break
        if match[row] < 0 and not used[col]:
            match[row], used[col] = col, True
    return match


def match_instances(
    panoptic: np.ndarray, max_instances: int, min_area_fraction: float = 0.01
) -> dict[str, np.ndarray]:
    """Instance targets of one sample (module docstring).

    Args:
      panoptic: int [F, H, W] panoptic ids, frame 0 (the target) first, already flipped.
      max_instances: M, the number of slots.
      min_area_fraction: alpha, the minimum instance area as a fraction of H * W.

    Returns:
      dict with the `KEYS` arrays.
    """
    if max_instances < 1:
        raise ValueError(f"jdepth/data/instances.py: max_instances must be >= 1, got {max_instances}")
    panoptic = np.asarray(panoptic)
    num_frames, height, width = panoptic.shape
    min_area = min_area_fraction * height * width
    masks = np.zeros((num_frames, max_instances, height, width), bool)
    valid = np.zeros((num_frames, max_instances), bool)

    target_ids, target_masks = frame_instances(panoptic[0], min_area)
    target_ids, target_masks = target_ids[:max_instances], target_masks[:max_instances]
    count = len(target_ids)
    masks[0, :count], valid[0, :count] = target_masks, True
    target_classes = panoptic_labels.class_of(target_ids)
    for f in range(1, num_frames):
        source_ids, source_masks = frame_instances(panoptic[f], min_area)
        if count == 0 or len(source_ids) == 0:
            continue
        iou = mask_iou(target_masks, source_masks)
        same_class = target_classes[:, None] == panoptic_labels.class_of(source_ids)[None, :]
        match = greedy_match(np.where(same_class, iou, 0.0))
        matched = match >= 0
        masks[f, :count][matched] = source_masks[match[matched]]
        valid[f, :count] = matched

    things = thing_mask(panoptic)
    return {
        "instance_masks": masks,
        "instance_valid": valid,
        "thing_mask": things,
        "dropped_mask": things[0] & ~masks[0].any(axis=0),
    }


def small_object_mask(panoptic: np.ndarray, min_area_fraction: float = 0.01) -> np.ndarray:
    """Frame-0 thing pixels outside every instance of at least alpha of the image, bool [H, W].

    "Masking small objects" (paper Sec. 3 / abstract) on its own, without piece-wise pose: the
    small (distant) objects and crowd regions, whose motion no pose explains. Unlike
    `dropped_mask`, instances beyond the M pose slots are kept: without piece-wise pose every
    pixel has the global pose, so the slot count means nothing.

    Args:
      panoptic: int [F, H, W] or [H, W] panoptic ids; frame 0 is the target.
      min_area_fraction: alpha.
    """
    ids = np.asarray(panoptic)
    ids = ids[0] if ids.ndim == 3 else ids
    height, width = ids.shape
    _, kept = frame_instances(ids, min_area_fraction * height * width)
    return thing_mask(ids) & ~kept.any(axis=0)


def empty_targets(num_frames: int, max_instances: int, height: int, width: int) -> dict:
    """Targets of a sample without any thing pixel (shapes as `match_instances`)."""
    return match_instances(np.zeros((num_frames, height, width), np.int32), max_instances)
