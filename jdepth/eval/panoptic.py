"""Panoptic inference (YOSO / Mask2Former post-processing) and PQ / SQ / RQ evaluation.

`panoptic_inference` turns one image's class and mask logits into a label map in the input
convention (jdepth/data/panoptic_labels.py: stuff = class id, things = class * 1000 + instance,
void = -1), so predictions and the label PNGs are compared with the same code. It is jittable and
vmappable (static shapes), the vectorised form of YOSO's `panoptic_inference` loop:

  keep proposals whose most likely class is not no-object with probability > score threshold;
  each pixel goes to the kept proposal with the largest score * sigmoid(mask); a proposal whose
  won area is < overlap_threshold x its own (mask >= 0.5) area is dropped (its pixels become
  void), as are pixels where the winner's own mask is < 0.5; stuff proposals of one class merge
  into one segment (automatic here: a stuff segment's id is its class); thing proposals get
  instance numbers 1, 2, ... in proposal order.

`PanopticQuality` accumulates the COCO/Cityscapes panoptic quality (Kirillov et al.) over images:
a predicted and a ground-truth segment of one class match when IoU > 0.5 (unique by that rule);
IoU ignores predicted pixels on void ground truth; an unmatched prediction is a false positive
unless more than half of it lies on void ground truth. PQ = sum IoU / (TP + FP/2 + FN/2) per
class, averaged over the classes that occur (things and stuff also separately).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdepth.data import kitti, pipeline
from jdepth.data import panoptic_labels as pl


def panoptic_inference(
    class_logits: jax.Array,
    mask_logits: jax.Array,
    *,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> jax.Array:
    """Semantic + instance merge of one image (module docstring).

    Args:
      class_logits: [Q, C + 1] (temperature applied); the last class is no-object.
      mask_logits: [H, W, Q] at the output resolution.
      object_mask_threshold: minimum class probability of a kept proposal (YOSO Cityscapes 0.8).
      overlap_threshold: minimum won-area / mask-area ratio (0.8).

    Returns:
      [H, W] int32 panoptic ids (void = -1).
    """
    num_queries = class_logits.shape[0]
    num_classes = class_logits.shape[-1] - 1
    prob = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
    scores, labels = jnp.max(prob, axis=-1), jnp.argmax(prob, axis=-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    masks = jax.nn.sigmoid(mask_logits.astype(jnp.float32))
    # Dropped proposals score -1 and never win over a kept one (kept ones score >= 0).
    weighted = jnp.where(keep, scores * masks, -1.0)
    winner = jnp.argmax(weighted, axis=-1)
    won = winner[..., None] == jnp.arange(num_queries)
    foreground = masks >= 0.5
    won_area = jnp.sum(won, axis=(0, 1))
    own_area = jnp.sum(foreground, axis=(0, 1))
    final_area = jnp.sum(won & foreground, axis=(0, 1))
    ok = (
        keep & (won_area > 0) & (own_area > 0) & (final_area > 0)
        & (won_area >= overlap_threshold * own_area)
    )
    thing = pl.is_thing_class(labels)
    instance = jnp.cumsum(ok & thing)  # 1-based among accepted things, in proposal order
    segment_id = jnp.where(thing, labels * pl.LABEL_DIVISOR + instance, labels)
    pixel_ok = jnp.take(ok, winner) & jnp.take_along_axis(foreground, winner[..., None], -1)[..., 0]
    return jnp.where(pixel_ok, jnp.take(segment_id, winner), pl.VOID).astype(jnp.int32)


def _segments(ids: np.ndarray):
    """Dense index per pixel (-1 void), and per segment its id, class and area."""
    flat = ids.reshape(-1)
    seg_ids, inverse, areas = np.unique(flat, return_inverse=True, return_counts=True)
    real = seg_ids != pl.VOID
    # Re-index so that real segments are 0..S-1 and void is -1.
    new_index = np.full(len(seg_ids), -1, np.int64)
    new_index[real] = np.arange(real.sum())
    return new_index[inverse], seg_ids[real], pl.class_of(seg_ids[real]), areas[real]


class PanopticQuality:
    """Accumulates PQ statistics over images; `result()` gives the averages (module docstring)."""

    def __init__(self, num_classes: int = pl.NUM_CLASSES):
        self.num_classes = num_classes
        self.tp = np.zeros(num_classes, np.int64)
        self.fp = np.zeros(num_classes, np.int64)
        self.fn = np.zeros(num_classes, np.int64)
        self.iou = np.zeros(num_classes, np.float64)

    def update(self, pred_ids: np.ndarray, gt_ids: np.ndarray) -> None:
        """Adds one image: predicted and ground-truth panoptic id maps [H, W]."""
        pred_ids, gt_ids = np.asarray(pred_ids), np.asarray(gt_ids)
        if pred_ids.shape != gt_ids.shape:
            raise ValueError(f"PanopticQuality: pred {pred_ids.shape} vs gt {gt_ids.shape}")
        p_idx, _, p_cls, p_area = _segments(pl.canonical_ids(pred_ids.astype(np.int64)))
        g_idx, _, g_cls, g_area = _segments(pl.canonical_ids(gt_ids.astype(np.int64)))
        n_p = len(p_area)
        # Joint histogram over (gt index + 1, pred index + 1); index 0 = void.
        joint = np.bincount((g_idx + 1) * (n_p + 1) + (p_idx + 1),
                            minlength=(len(g_area) + 1) * (n_p + 1)).reshape(-1, n_p + 1)
        on_void = joint[0, 1:]  # predicted pixels on void ground truth
        inter = joint[1:, 1:]
        g_matched = np.zeros(len(g_area), bool)
        p_matched = np.zeros(n_p, bool)
        gs, ps = np.nonzero(inter)
        for g, p in zip(gs, ps):
            if g_cls[g] != p_cls[p]:
                continue
            union = g_area[g] + p_area[p] - inter[g, p] - on_void[p]
            iou = inter[g, p] / union
            if iou > 0.5:
                g_matched[g] = p_matched[p] = True
                self.tp[g_cls[g]] += 1
                self.iou[g_cls[g]] += iou
        for g in np.nonzero(~g_matched)[0]:
            self.fn[g_cls[g]] += 1
        for p in np.nonzero(~p_matched)[0]:
            if on_void[p] <= 0.5 * p_area[p]:
                self.fp[p_cls[p]] += 1

    def result(self) -> dict[str, float]:
        """pq / sq / rq over all classes, things and stuff (x100), plus per-class pq."""
        out = {}
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        present = denom > 0
        pq = np.where(present, self.iou / np.maximum(denom, 1e-12), 0.0)
        sq = np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0)
        rq = np.where(present, self.tp / np.maximum(denom, 1e-12), 0.0)
        thing = pl.is_thing_class(np.arange(self.num_classes))
        for name, group in (("", np.ones_like(thing)), ("_things", thing), ("_stuff", ~thing)):
            sel = present & group
            n = max(int(sel.sum()), 1)
            out[f"pq{name}"] = 100.0 * float(pq[sel].sum() / n)
            out[f"sq{name}"] = 100.0 * float(sq[sel].sum() / n)
            out[f"rq{name}"] = 100.0 * float(rq[sel].sum() / n)
            out[f"classes{name}"] = int(sel.sum())
        for c in np.nonzero(present)[0]:
            out[f"pq/{pl.CLASS_NAMES[c] if c < len(pl.CLASS_NAMES) else c}"] = 100.0 * float(pq[c])
        return out


def instance_edge_band(ids: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` (Chebyshev) of an edge of a thing instance: [H, W] -> bool [H, W].

    An edge pixel has a 4-neighbour with a different (canonical) id, and one of the two is a thing
    instance. Used to evaluate depth near object boundaries.
    """
    ids = pl.canonical_ids(np.asarray(ids).astype(np.int64))
    thing = pl.is_thing_class(pl.class_of(ids))
    edge = np.zeros(ids.shape, bool)
    for axis in (0, 1):
        a = np.take(ids, range(ids.shape[axis] - 1), axis=axis)
        b = np.take(ids, range(1, ids.shape[axis]), axis=axis)
        ta = np.take(thing, range(ids.shape[axis] - 1), axis=axis)
        tb = np.take(thing, range(1, ids.shape[axis]), axis=axis)
        diff = (a != b) & (ta | tb)
        pad_before = [(0, 0), (0, 0)]
        pad_after = [(0, 0), (0, 0)]
        pad_before[axis], pad_after[axis] = (1, 0), (0, 1)
        edge |= np.pad(diff, pad_before) | np.pad(diff, pad_after)
    band = edge.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            band |= np.roll(np.roll(edge, dy, 0), dx, 1) & _roll_valid(edge.shape, dy, dx)
    return band


def _roll_valid(shape: tuple[int, int], dy: int, dx: int) -> np.ndarray:
    """Mask of pixels whose np.roll source did not wrap around the image border."""
    rows = np.arange(shape[0]) - dy
    cols = np.arange(shape[1]) - dx
    return ((rows >= 0) & (rows < shape[0]))[:, None] & ((cols >= 0) & (cols < shape[1]))[None, :]


def evaluate_panoptic_split(
    predict_ids, root: str, split_file: str, height: int, width: int, *,
    batch_size: int = 8, max_images: int | None = None,
) -> dict[str, float]:
    """PQ / SQ / RQ of a predictor against the label PNGs of a split.

    Predictions are made at the network resolution and resized to each label map's native
    resolution by nearest neighbour (labels are never interpolated), so the numbers are those of
    the label files themselves.

    Args:
      predict_ids: float32 images [B, height, width, 3] in [0, 1] -> int ids [B, height, width].
      root, split_file: KITTI-layout root and split.
      height, width: the network's input resolution.
      batch_size: images per call (the last batch is padded: one compiled shape).
      max_images: evaluate the first N frames only.

    Returns:
      `PanopticQuality.result()` plus "num_images".
    """
    refs = kitti.read_split_file(split_file)[: max_images or None]
    pq = PanopticQuality()
    for start in range(0, len(refs), batch_size):
        chunk = refs[start:start + batch_size]
        images = [pipeline.resize_image(kitti.load_image(kitti.image_path(root, ref)), height,
                                        width) for ref in chunk]
        images += [images[-1]] * (batch_size - len(chunk))
        ids = np.asarray(predict_ids(np.stack(images).astype(np.float32) / 255.0))
        for ref, pred in zip(chunk, ids):
            gt = kitti.load_panoptic(kitti.panoptic_path(root, ref))
            pq.update(pipeline.resize_labels(pred, *gt.shape), gt)
    return {**pq.result(), "num_images": len(refs)}
