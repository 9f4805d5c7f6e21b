"""Piece-wise (per-instance) pose for dynamic objects (paper Sec. 3.3, Fig. 3; DESIGN.md item 4).

`config.piecewise.enabled` makes it the pose source of the step's plug-in protocol
(jdepth/training/plugins.py), in every recipe family (Monodepth2, students, ManyDepth):

* Global (ego) pose: the pose net on the pair with every thing pixel zeroed in both frames
  (`batch["thing_mask"]`), so moving cars cannot drag the camera motion.
* Instance poses: the same pose net on the pair masked to one matched instance (both frames), one
  6-DoF pose per slot of `batch["instance_masks"]` (jdepth/data/instances.py). All B * M slots
  run as ONE batched call per source frame (reshape `[B * M, H, W, 3]`), padded slots included:
  static shapes, one compilation whatever the number of instances.
* Which network makes the instance call (`config.piecewise.instance_network`): "shared" (the
  paper: "we reconfigure the pose estimation network") runs the recipe's pose net on the masked
  instance pairs too; "separate" gives the instances their own PoseNet (params and batch_stats
  under "instance_pose", learning rate of the "pose" group), so the ego pose net never fits
  instance pairs.
* What the instance call predicts (`config.piecewise.instance_pose`). "absolute" (default, the
  paper: "instance-wise pose estimation is computed employing the masked instance image"): the
  net predicts the whole target->source transform of the instance; it starts at identity (the
  car pixels do not move, whatever their depth: no depth signal there until the net learns the
  ego motion from them). Deviations, kept as options: "residual": the object's own motion M in
  the target camera frame, so the instance's transform is T_global @ M, with T_global held fixed
  there (stop-gradient: cars do not move the ego pose). The pose decoder starts near identity
  (outputs x 0.01), so at step 0 every instance moves with the camera, exactly the global warp,
  and a parked car never has to re-learn the ego-motion from a mostly black masked pair.
  "residual_coupled": the same transform without the stop-gradient, so the car pixels (parked
  cars: the nearest, most textured, largest-parallax pixels of a street scene) still train the
  ego pose through T_global @ M, as they do in Monodepth2; a moving car's own motion is M's to
  explain. "none" (an ablation): no instance call; the ego pose from thing-masked pairs warps
  every pixel and no pixel is dropped, which isolates what masking the ego pose's input costs.
  What each mode measured at the demo budget (per object the depth / motion trade-off is free,
  so parked cars get large residuals): RESULTS.md, issue 7.
* What the instance call sees (`config.piecewise.instance_input`). "masked" (the paper): both
  frames masked to the instance. It shows the car but neither the background nor the ego
  motion, so the net cannot tell which part of a car's image motion is the camera's (issue 7,
  motion prior below). "ego_warped" (struct2depth, Casser et al. 2019; residual modes only): the
  masked target instance and the masked source instance carried into the target view by the ego
  pose and the current depth (`ego_warped_slots`, both stop-gradient). A parked car with the
  right depth then lands on itself and a moving one shows only its own motion, which is what
  the residual M is. It does not separate moving from parked cars either (RESULTS.md, issue 7).
* Warm-up (`config.piecewise.start_step`, 0 = the paper): before it the objective is
  Monodepth2's (unmasked ego pairs, global warp, no pixel dropped; `train_poses`; why:
  jdepth/training/plugin_warmup.py).
* Small-motion prior (`config.piecewise.motion_prior_weight`, 0 = the paper): the residual
  scene flow of instance pixels per unit depth (jdepth/losses/motion_prior.py), meant to hold a
  parked car's motion at identity unless its photometric error pays for a motion. On masked
  inputs it does not separate parked from moving cars (issue 7): at 0.05 / 0.1 every car's
  residual stays near the ego translation (median 1.07x / 0.82x); 0.2 pins every car at 0.01x.
* Per-object depth priors (not in the paper; 0 = off; both logged in every piece-wise run): the
  object's own motion leaves its depth free, so these pin it by geometry instead of photometry.
  `size_prior_weight`: one real height per class, log(mean depth x rows spanned) pulled to the
  batch median (jdepth/losses/object_size.py, struct2depth's). `contact_prior_weight`: a car's
  lowest rows and the road below them pulled together (jdepth/losses/ground_contact.py).
* Depth on instance pixels (`config.piecewise.instance_depth_gradient`): True (the paper: "we do
  not modify the aggregate loss") lets every pixel's photometric error train the depth. False:
  pixels of valid instances train their instance pose only (`depth_frozen_mask`), since a free
  per-object motion leaves their depth unconstrained.
* Composed warp: every target pixel inside a valid, matched target instance is moved by that
  instance's transform, every other pixel by the global one: a per-pixel `[B, H, W, 4, 4]`
  transform that `geometry.inverse_warp` (and so `losses.monodepth.monodepth_loss`) consumes at
  full resolution. Target thing pixels without a pose (`batch["dropped_mask"]`: below alpha,
  beyond M, crowd) get weight 0 in the photometric mean (paper: "masking small objects").

The global poses stay the recipe's `poses` ([B, 4, 4], for the pose summary, the speed loss and
the plug-ins); only the photometric warp sees the composed transforms. Pair order and inversion
follow Monodepth2 (`training.monodepth.predict_poses`).

BatchNorm: the global call is the recipe's pose call (train mode, its statistics update the
running averages as before). The instance call also normalises with its own batch statistics
(train mode, so instance poses are not computed with running averages the step never fitted),
but its updates are DISCARDED: the running statistics, used at evaluation, keep describing
static-scene pairs. Padded slots are all-zero pairs and take part in the instance call's batch
statistics, so an instance's normalisation depends (smoothly) on how many slots of the batch are
filled; masked statistics would need a mask threaded through the ResNet encoder.

ManyDepth (jdepth/training/manydepth.py): the composed warp serves the photometric losses of the
mono teacher and of the multi-frame network; the cost volume keeps the GLOBAL pose. At test time
no instance masks exist, so a cost volume built with instance poses in training would see
geometry it never sees at test; moving objects in the cost volume are handled by ManyDepth's
consistency mask as before. After the teacher freeze the pose calls run in eval mode
(`train_poses(train=False)`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth import geometry
from jdepth.losses import motion_prior as motion_prior_lib
from jdepth.training import plugin_warmup

INSTANCE_NET = "instance_pose"  # params / batch_stats key of the "separate" instance pose net
# `instance_pose` modes whose net output is the object's own motion M (instance = ego @ M).
RESIDUAL_MODES = ("residual", "residual_coupled")


class ResidualMotions(NamedTuple):
    """One source frame's residual instance motions, for `losses.motion_prior`."""

    global_T: jax.Array  # [B, 4, 4] ego target->source transform
    residual_T: jax.Array  # [B, M, 4, 4] each slot's own motion M (instance = global @ M)
    target_masks: jax.Array  # [B, M, H, W] the slots' masks in the target frame
    valid: jax.Array  # [B, M] slots whose transform warps their pixels


def is_enabled(config) -> bool:
    """Whether `config.piecewise.enabled` is set (no `piecewise` section: off)."""
    cfg = config.get("piecewise")
    return bool(cfg is not None and cfg.enabled)


def separate_network(config) -> bool:
    """Whether the instance poses come from their own PoseNet (`instance_network`)."""
    if not is_enabled(config):
        return False
    kind = config.piecewise.get("instance_network", "shared")
    if kind not in ("shared", "separate"):
        raise ValueError(f"jdepth/training/piecewise.py: piecewise.instance_network must be "
                         f"'shared' or 'separate', got {kind!r}")
    return kind == "separate"


def uses_ego_view(piecewise_config) -> bool:
    """Whether the instance call sees ego-warped sources (`instance_input`, validated)."""
    kind = piecewise_config.get("instance_input", "masked")
    mode = piecewise_config.get("instance_pose", "residual")
    if kind not in ("masked", "ego_warped"):
        raise ValueError(f"jdepth/training/piecewise.py: piecewise.instance_input must be "
                         f"'masked' or 'ego_warped', got {kind!r}")
    if kind == "ego_warped" and mode not in RESIDUAL_MODES:
        raise ValueError(
            f"jdepth/training/piecewise.py: piecewise.instance_input='ego_warped' shows the "
            f"instance call the motion left after the ego warp, a residual; "
            f"piecewise.instance_pose={mode!r} is not one (use 'residual' or 'residual_coupled')")
    return kind == "ego_warped"


def pipeline_settings(config) -> dict[str, Any]:
    """`PipelineConfig` fields for the instance targets (max_instances 0 when off)."""
    if not is_enabled(config):
        return {"max_instances": 0}
    if not config.data.get("load_panoptic", False):
        raise ValueError(
            "jdepth/training/piecewise.py: config.piecewise.enabled needs panoptic labels; set "
            "config.data.load_panoptic=True"
        )
    return {
        "max_instances": int(config.piecewise.max_instances),
        "min_instance_area": float(config.piecewise.min_area_fraction),
    }


def _pose_pair(
    pose_net: nn.Module, params, batch_stats, frame: int, target: jax.Array, source: jax.Array,
    train: bool = True,
) -> tuple[jax.Array, Any]:
    """T(0 -> frame) ``[N, 4, 4]`` from one call in Monodepth2's pair order.

    `train` False: eval mode (running statistics, returned unchanged), as a frozen pose net runs.
    """
    pair = (source, target) if frame < 0 else (target, source)
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        (axisangle, translation), _ = pose_net.apply(variables, *pair, train=False)
        return (geometry.transformation_from_parameters(axisangle, translation, invert=frame < 0),
                batch_stats)
    ((axisangle, translation), _), updates = pose_net.apply(
        variables, *pair, train=True, mutable=["batch_stats"]
    )
    T = geometry.transformation_from_parameters(axisangle, translation, invert=frame < 0)
    return T, updates["batch_stats"]


def masked_slots(image: jax.Array, masks: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` image, ``[B, M, H, W]`` masks -> ``[B, M, H, W, C]``, a copy per slot."""
    return image[:, None] * masks[..., None].astype(image.dtype)


def slot_poses(
    pose_net: nn.Module, params, batch_stats, frame: int, target_slots: jax.Array,
    source_slots: jax.Array, train: bool = True,
) -> jax.Array:
    """``[B, M, 4, 4]`` poses of ``[B, M, H, W, 3]`` slot pairs, ONE batched call (BN updates
    discarded; padded slots see zero images and their poses must be ignored via the valid flags).
    """
    batch, slots = target_slots.shape[:2]
    T, _ = _pose_pair(
        pose_net, params, batch_stats, frame, target_slots.reshape(-1, *target_slots.shape[2:]),
        source_slots.reshape(-1, *source_slots.shape[2:]), train)
    return T.reshape(batch, slots, 4, 4)


def instance_poses(
    pose_net: nn.Module,
    params,
    batch_stats,
    frame: int,
    target: jax.Array,
    source: jax.Array,
    target_masks: jax.Array,
    source_masks: jax.Array,
) -> jax.Array:
    """One pose per instance slot from the pair masked to it (the paper's instance input).

    Args:
      pose_net: the recipe's PoseNet.
      params, batch_stats: its variables.
      frame: the source frame id (its sign sets the pair order).
      target: ``[B, H, W, 3]`` frame 0.
      source: ``[B, H, W, 3]`` frame ``frame``.
      target_masks: ``[B, M, H, W]`` instance masks in frame 0.
      source_masks: ``[B, M, H, W]`` the matched masks in frame ``frame``.

    Returns:
      ``[B, M, 4, 4]`` target->source transform of every slot (`slot_poses`).
    """
    return slot_poses(pose_net, params, batch_stats, frame, masked_slots(target, target_masks),
                      masked_slots(source, source_masks))


def ego_warped_slots(
    source: jax.Array, source_masks: jax.Array, depth: jax.Array, global_T: jax.Array,
    K: jax.Array, inv_K: jax.Array,
) -> jax.Array:
    """Each masked source instance carried into the target view by the ego motion alone.

    struct2depth's object-motion input (Casser et al. 2019): after the ego warp a parked car
    with the right depth lands on itself, and what is left to see is the object's own motion, the
    residual the instance net predicts. Depth and pose are constants here (stop-gradient): the
    input is a view of the current estimate, not a path for the instance poses to train them.

    Args:
      source: ``[B, H, W, 3]`` source frame.
      source_masks: ``[B, M, H, W]`` the slots' masks in the source frame.
      depth: ``[B, H, W, 1]`` target depth.
      global_T: ``[B, 4, 4]`` ego target->source transform.
      K, inv_K: ``[B, 4, 4]`` intrinsics at the resolution of ``depth``.

    Returns:
      ``[B, M, H, W, 3]``: slot m is warp(source * mask_m), zero where it samples outside.
    """
    batch, slots, height, width = source_masks.shape
    stacked = jnp.moveaxis(masked_slots(source, source_masks), 1, 3)  # [B, H, W, M, 3]
    warped, _ = geometry.inverse_warp(
        stacked.reshape(batch, height, width, slots * 3), jax.lax.stop_gradient(depth),
        jax.lax.stop_gradient(global_T), K, inv_K, padding="zeros")
    return jnp.moveaxis(warped.reshape(batch, height, width, slots, 3), 3, 1)


def instance_transforms(global_T: jax.Array, net_T: jax.Array, mode: str) -> jax.Array:
    """The instance slots' target->source transforms from the instance call's output.

    Args:
      global_T: ``[B, 4, 4]`` ego transform of the pair.
      net_T: ``[B, M, 4, 4]`` the pose net's transform of every slot.
      mode: "residual" (net_T is the object's motion in the target camera frame, applied before
        the ego motion; no gradient into global_T), "residual_coupled" (the same transform, and
        the instance pixels' gradient also reaches global_T) or "absolute" (net_T is the
        transform).

    Returns:
      ``[B, M, 4, 4]``.
    """
    if mode == "absolute":
        return net_T
    if mode == "residual":
        return jnp.einsum("bij,bmjk->bmik", jax.lax.stop_gradient(global_T), net_T)
    if mode == "residual_coupled":
        return jnp.einsum("bij,bmjk->bmik", global_T, net_T)
    raise ValueError(f"jdepth/training/piecewise.py: piecewise.instance_pose must be 'residual', "
                     f"'residual_coupled', 'absolute' or 'none', got {mode!r}")


def compose_transforms(
    global_T: jax.Array, instance_T: jax.Array, target_masks: jax.Array, valid: jax.Array
) -> jax.Array:
    """Per-pixel transforms: the matched instance's inside its target mask, the global elsewhere.

    Args:
      global_T: ``[B, 4, 4]``.
      instance_T: ``[B, M, 4, 4]``.
      target_masks: ``[B, M, H, W]`` bool/0-1 target instance masks (disjoint: panoptic).
      valid: ``[B, M]`` bool, the slots whose pose may be used (target instance matched in this
        source frame).

    Returns:
      ``[B, H, W, 4, 4]``. Written as global + sum of masked differences, so a pixel outside
      every valid instance gets exactly ``global_T`` (and its gradient).
    """
    weights = target_masks.astype(global_T.dtype) * valid.astype(global_T.dtype)[:, :, None, None]
    delta = instance_T - global_T[:, None]
    return global_T[:, None, None] + jnp.einsum("bmhw,bmij->bhwij", weights, delta)


def photometric_weights(dropped_mask: jax.Array) -> jax.Array:
    """``[B, H, W]`` dropped thing pixels -> ``[B, H, W, 1]`` float weights (0 there, else 1)."""
    return (1.0 - dropped_mask.astype(jnp.float32))[..., None]


def predict_piecewise_poses(
    pose_net: nn.Module, params, batch_stats, frames: dict[int, jax.Array], batch: dict,
    frame_ids: tuple[int, ...], instance_pose: str = "residual",
    instance_net: tuple[nn.Module, Any, Any] | None = None,
    ego_view: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> tuple[dict[int, jax.Array], dict[int, jax.Array], Any, dict[str, jax.Array]]:
    """Global and composed poses of every source frame (module docstring), train mode.

    Args:
      pose_net, params, batch_stats: the recipe's pose network and its variables.
      frames: frame id -> ``[B, H, W, 3]`` pose-net inputs (the colour-jittered frames).
      batch: holds ``instance_masks`` ``[B, F, M, H, W]``, ``instance_valid`` ``[B, F, M]`` and
        ``thing_mask`` ``[B, F, H, W]`` in `frame_ids` order (jdepth/data/instances.py).
      frame_ids: the order of the F axis.
      instance_pose: "residual" or "absolute" (`instance_transforms`).
      instance_net: (network, params, batch_stats) of a separate instance pose net; None: the
        instance call uses `pose_net` (shared).
      ego_view: None: the instance call sees the pair masked to the instance (the paper).
        (depth ``[B, H, W, 1]``, K, inv_K ``[B, 4, 4]``): it sees the masked target and the
        masked source instance after the ego warp with that depth (`ego_warped_slots`).

    Returns:
      (global poses {f: ``[B, 4, 4]``}, warp poses {f: ``[B, H, W, 4, 4]``}, updated
      batch_stats (global calls only), aux scalars).
    """
    _check_batch(batch)
    global_poses, warp_poses, batch_stats, _ = _poses(
        pose_net, params, batch_stats, frames, batch, frame_ids, instance_pose, instance_net,
        ego_view)
    return global_poses, warp_poses, batch_stats, instance_statistics(batch, frame_ids)


def _poses(pose_net, params, batch_stats, frames, batch, frame_ids, instance_pose, instance_net,
           ego_view=None, train=True):
    """`predict_piecewise_poses` without the batch check and the log scalars.

    The fourth output maps each source frame to `ResidualMotions` (None with "none"/"absolute").
    """
    if ego_view is not None and instance_pose not in RESIDUAL_MODES:
        raise ValueError(f"jdepth/training/piecewise.py: an ego view shows the instance call a "
                         f"residual motion; instance_pose={instance_pose!r} is not one")
    index = {f: i for i, f in enumerate(frame_ids)}
    keep = 1.0 - batch["thing_mask"].astype(jnp.float32)[..., None]
    target_masks = batch["instance_masks"][:, index[0]]
    global_poses, warp_poses, motions = {}, {}, {}
    shared = instance_net is None
    for f in sorted(k for k in frames if k != 0):
        T, batch_stats = _pose_pair(
            pose_net, params, batch_stats, f, frames[0] * keep[:, index[0]],
            frames[f] * keep[:, index[f]], train
        )
        global_poses[f] = T
        if instance_pose == "none":  # the ablation: thing-masked ego pose, global warp
            warp_poses[f] = T
            continue
        net, net_params, net_stats = (
            (pose_net, params, batch_stats) if shared else instance_net)
        source_masks = batch["instance_masks"][:, index[f]]
        source_slots = (masked_slots(frames[f], source_masks) if ego_view is None else
                        ego_warped_slots(frames[f], source_masks, ego_view[0], T, *ego_view[1:]))
        net_T = slot_poses(net, net_params, net_stats, f, masked_slots(frames[0], target_masks),
                           source_slots, train)
        instance_T = instance_transforms(T, net_T, instance_pose)
        valid = batch["instance_valid"][:, index[f]] & batch["instance_valid"][:, index[0]]
        warp_poses[f] = compose_transforms(T, instance_T, target_masks, valid)
        if instance_pose in RESIDUAL_MODES:
            motions[f] = ResidualMotions(T, net_T, target_masks, valid)
    return global_poses, warp_poses, batch_stats, motions or None


def instance_statistics(batch: dict, frame_ids: tuple[int, ...]) -> dict[str, jax.Array]:
    """Log scalars of the batch's instance targets: slots filled, matched per source, dropped."""
    index = {f: i for i, f in enumerate(frame_ids)}
    valid = batch["instance_valid"]
    matched = [jnp.mean(jnp.sum(valid[:, index[f]] & valid[:, index[0]], axis=1).astype(
        jnp.float32)) for f in frame_ids if f != 0]
    return {
        "piecewise/instances": jnp.mean(jnp.sum(valid[:, index[0]], axis=1).astype(jnp.float32)),
        "piecewise/matched": sum(matched) / len(matched),
        "piecewise/dropped_fraction": jnp.mean(batch["dropped_mask"].astype(jnp.float32)),
    }


def train_poses(
    pose_net: nn.Module, params, batch_stats, frames: dict[int, jax.Array], batch: dict,
    frame_ids: tuple[int, ...], piecewise_config, step: jax.Array,
    instance_net: tuple[nn.Module, Any, Any] | None = None,
    ego_view: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    train: bool = True,
) -> tuple[dict[int, jax.Array], dict[int, jax.Array], Any, dict[str, jax.Array], jax.Array]:
    """The poses of a piece-wise step, with the warm-up `piecewise.start_step`.

    Before the start step the step computes Monodepth2's objective: the thing mask is lifted from
    the ego pairs, every instance slot is invalid (the global warp everywhere) and no pixel is
    dropped. The gate is a traced value of the step, so switching on does not recompile; the
    instance call still runs in the warm-up (see jdepth/training/plugin_warmup.py on why not
    `lax.cond`), so the warm-up costs a piece-wise step.

    Args:
      piecewise_config: the `config.piecewise` section (`instance_pose`, `instance_input`,
        `start_step`, `motion_prior_weight`).
      step: the state's step.
      ego_view: (depth ``[B, H, W, 1]``, K, inv_K) for `instance_input` "ego_warped"; ignored
        with "masked".
      train: False runs every pose call in eval mode (ManyDepth's frozen pose net).
      Others: as `predict_piecewise_poses`.

    Returns:
      (global poses, warp poses {f: ``[B, H, W, 4, 4]``; ``[B, 4, 4]``, the global ones, with
      `instance_pose` "none"}, batch_stats, aux scalars, photometric pixel weights
      ``[B, H, W, 1]``, None with "none"; residual motions {f: `ResidualMotions`} for
      `motion_prior`, None unless `instance_pose` is "residual" or "residual_coupled").
    """
    _check_batch(batch)
    live = plugin_warmup.active(step, plugin_warmup.start_step(piecewise_config))
    on = live > 0
    gated = {
        **batch,
        "thing_mask": batch["thing_mask"] & on,
        "instance_valid": batch["instance_valid"] & on,
        "dropped_mask": batch["dropped_mask"] & on,
    }
    mode = piecewise_config.get("instance_pose", "residual")
    if piecewise_config.get("motion_prior_weight", 0.0) > 0 and mode not in RESIDUAL_MODES:
        raise ValueError(
            f"jdepth/training/piecewise.py: piecewise.motion_prior_weight > 0 penalises residual "
            f"instance motions; piecewise.instance_pose={mode!r} has none (use 'residual' or "
            "'residual_coupled')")
    if not uses_ego_view(piecewise_config):
        ego_view = None
    elif ego_view is None:
        raise ValueError("jdepth/training/piecewise.py: piecewise.instance_input='ego_warped' "
                         "needs ego_view=(depth, K, inv_K) for the ego warp")
    # The log scalars describe the batch's instances, gated or not.
    poses, warp, stats, motions = _poses(
        pose_net, params, batch_stats, frames, gated, frame_ids, mode, instance_net, ego_view,
        train)
    aux = {**instance_statistics(batch, frame_ids), "piecewise/active": live}
    # Without instance poses every thing pixel has the (global) pose: none is dropped.
    weights = None if mode == "none" else photometric_weights(gated["dropped_mask"])
    return poses, warp, stats, aux, weights, motions


def motion_prior(
    motions: dict[int, ResidualMotions] | None, depth: jax.Array, inv_K: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`losses.motion_prior.residual_motion_prior`, averaged over the source frames.

    Args:
      motions: `train_poses`'s last output (None: no residual motions, the prior is 0).
      depth: ``[B, H, W, 1]`` target depth at the warp's (full) resolution.
      inv_K: ``[B, 4, 4]`` its inverse intrinsics.

    Returns:
      (prior, log scalars: the prior and the residual / ego flow ratio on instance pixels).
    """
    if not motions:
        return jnp.float32(0.0), {}
    priors, ratios = zip(*(
        motion_prior_lib.residual_motion_prior(
            depth, inv_K, m.global_T, m.residual_T, m.target_masks, m.valid)
        for m in motions.values()))
    prior = sum(priors) / len(priors)
    return prior, {"piecewise/motion_prior": prior,
                   "piecewise/residual_flow_ratio": sum(ratios) / len(ratios)}


def depth_frozen_mask(batch: dict, piecewise_config, step: jax.Array) -> jax.Array | None:
    """``[B, H, W, 1]`` target pixels of valid instances, when their error may not train depth.

    With `piecewise.instance_depth_gradient` False, a pixel inside a kept target instance (a slot
    of frame 0: above alpha, within M) trains the instance's poses but not the depth: per object,
    depth and motion trade off freely (a car twice as far moving twice as fast warps the same), so
    the instance pixels' photometric error does not pin their depth; the depth network learns from
    the static scene and generalises to the cars. True (the paper, default): None.

    Args:
      batch: holds ``instance_masks`` ``[B, F, M, H, W]`` and ``instance_valid`` ``[B, F, M]``,
        frame 0 first.
      piecewise_config: `config.piecewise`.
      step: the state's step (nothing is frozen before `start_step`).
    """
    if piecewise_config.get("instance_depth_gradient", True):
        return None
    masks, valid = target_instances(batch, piecewise_config, step)
    return jnp.any(masks & valid[:, :, None, None], axis=1)[..., None]


def target_instances(batch: dict, piecewise_config, step: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    """Frame 0's slots: masks ``[B, M, H, W]`` and valid ``[B, M]`` (none before `start_step`)."""
    live = plugin_warmup.active(step, plugin_warmup.start_step(piecewise_config)) > 0
    return batch["instance_masks"][:, 0], batch["instance_valid"][:, 0] & live


def _check_batch(batch: dict) -> None:
    missing = [k for k in ("instance_masks", "instance_valid", "thing_mask", "dropped_mask")
               if k not in batch]
    if missing:
        raise ValueError(
            f"jdepth/training/piecewise.py: piece-wise pose needs {missing} in the batch; the "
            "pipeline writes them when config.piecewise.enabled and config.data.load_panoptic "
            "are set (jdepth/data/instances.py)"
        )
