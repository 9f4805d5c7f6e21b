"""The ManyDepth recipe: multi-frame cost-volume network, mono teacher, pose net; train and eval.

Networks (params / batch_stats keys): ``depth`` the multi-frame ManyDepthNet, ``mono`` the
single-frame teacher (a Monodepth2 DepthNet), ``pose`` the Monodepth2 PoseNet. Recipe state
outside gradients (``state.extra``, checkpointed with the model): the adaptive depth range
``min_depth_bin`` / ``max_depth_bin`` of the cost volume, used again at evaluation.

One step (manydepth/trainer.py ``process_batch``), before the freeze:
  1. poses 0->-1, 0->+1 from the pose net on the jittered frames (train mode);
  2. the teacher's disparity of the jittered frame 0, and its loss (jdepth/losses/manydepth.py);
  3. matching augmentation, one draw per sample: with p 0.25 the lookup frame becomes the
     un-jittered frame 0 (static camera), with p 0.25 the matching pose becomes 0 (no cost
     volume); both switch that sample's reprojection loss off;
  4. the multi-frame network on the jittered frame 0 and the jittered lookup frame -1 with the
     detached pose 0->-1 and the adaptive bins;
  5. consistency mask (confidence x within 2x of the teacher) and the multi-frame loss with
     detached poses; total = multi + teacher;
  6. the bins' EMA from the teacher depth.
  7. with ``config.panoptic`` / ``config.contrastive`` on, the panoptic plug-in
     (jdepth/training/panoptic.py) on the multi-frame pass: the head reads the multi-frame
     encoder's features, the contrastive loss its decoder features (ManyDepth+, DESIGN.md).
From the freeze step on (``jdepth/training/teacher_freeze.py``) teacher and pose run in eval mode
without gradient, their loss is logged but not added and the bins stop moving. The phase is a
traced flag (``state.step < freeze step``) selecting between values, so the step compiles once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from jdepth import geometry
from jdepth.interop import encoder_init
from jdepth.losses import manydepth as md_losses
from jdepth.losses import velocity as velocity_lib
from jdepth.models.manydepth import MATCHING_SCALE, ManyDepthNet
from jdepth.models.manydepth_hrnet import ManyDepthHRNet
from jdepth.training import collapse, metric_init, monodepth, piecewise, teacher_freeze
from jdepth.training import panoptic as panoptic_plugin
from jdepth.training import plugins as plugins_lib
from jdepth.training.state import TrainState
from jdepth.training.teacher_freeze import make_optimizer  # noqa: F401  (recipe protocol)

Metrics = dict[str, jax.Array]

LOOKUP_FRAMES = (-1,)  # the reference default: num_matching_frames=1, no future frame


def lookup_frames(config) -> tuple[int, ...]:
    """Frames the eval forward pass needs besides frame 0 (none when evaluating the teacher)."""
    return () if config.eval.get("teacher", False) else LOOKUP_FRAMES


def build_depth_network(config, bn_axis_name: str | None = None) -> nn.Module:
    """The multi-frame network of ``config.model.depth_arch``: "resnet" (ManyDepthNet, the
    default and the reference) or "hrnet" (ManyDepthHRNet: HRNet-18 + DIFFNet decoder, ManyDepth+).
    Both take the same inputs and return the same disps and aux keys."""
    m = config.model
    arch = m.get("depth_arch", "resnet")
    matching = dict(
        scales=tuple(m.scales),
        num_depth_bins=m.num_depth_bins,
        depth_binning=m.depth_binning,
        msff=m.msff,
        cost_volume_gradient=m.cost_volume_gradient,
        matching_border=m.matching_border,
        bins_per_chunk=m.get("bins_per_chunk") or None,
        bn_axis_name=bn_axis_name,
        dtype=jnp.dtype(m.dtype),
    )
    if arch == "resnet":
        return ManyDepthNet(num_layers=m.num_layers, **matching)
    if arch == "hrnet":
        return ManyDepthHRNet(normalize_input=m.get("hrnet_normalize_input", True), **matching)
    raise ValueError(
        f"config.model.depth_arch must be one of {monodepth.DEPTH_ARCHS}, got {arch!r}"
    )


def teacher_config(config):
    """The config the mono teacher and the pose net are built from.

    The teacher's architecture is ``config.model.mono_arch`` ("resnet", the default, or "hrnet"),
    independent of the multi-frame ``depth_arch``: ManyDepth's teacher only supplies the
    consistency mask (a 2x tolerance), the adaptive bins and the pose net's co-training, and it is
    frozen at epoch 15; the paper does not describe ManyDepth+'s teacher. A ResNet-18 teacher also
    keeps the CPU compile of the step to one HRNet (each HRNet network adds minutes).
    """
    teacher = config.copy_and_resolve_references()
    with teacher.unlocked():
        teacher.model.depth_arch = config.model.get("mono_arch", "resnet")
    return teacher


def build_networks(config, bn_axis_name: str | None = None) -> dict[str, nn.Module]:
    """``depth`` (multi-frame), ``mono`` (teacher), ``pose`` and, with the panoptic head on,
    ``panoptic``, as linen modules."""
    _check_config(config)
    mono = monodepth.build_networks(teacher_config(config), bn_axis_name)
    networks = {
        "depth": build_depth_network(config, bn_axis_name),
        "mono": mono["depth"],
        "pose": mono["pose"],
    }
    if piecewise.INSTANCE_NET in mono:  # piece-wise pose with its own instance pose net
        networks[piecewise.INSTANCE_NET] = mono[piecewise.INSTANCE_NET]
    if panoptic_plugin.head_enabled(config):
        networks[panoptic_plugin.HEAD] = panoptic_plugin.build_head(
            config, jnp.dtype(config.model.dtype)
        )
    return networks


def init_variables(networks: dict[str, nn.Module], config, rng: jax.Array):
    """Initial (params, batch_stats) keyed ``depth``, ``mono``, ``pose``.

    Teacher and pose net get exactly the initial values the Monodepth2 recipe gives its depth and
    pose nets for the same seed. With the same data, noise keys and ``teacher_reduction="min"``
    the teacher then follows the Monodepth2 run step for step, so a comparison of the two recipes
    measures what the multi-frame network adds. (From scratch the teacher's fate depends on its
    initial values: with another draw it saturated at the minimum depth by step 50; RESULTS.md.)

    `model.encoder_init`: ImageNet weights go into the single-frame networks' encoders (as for
    Monodepth2); a params file (fine-tuning, tools/make_start.py) into the whole tree, keyed
    ``depth`` (multi-frame), ``mono``, ``pose``, ... as the params this returns.
    """
    single_frame = {"depth": networks["mono"], "pose": networks["pose"]}
    if piecewise.INSTANCE_NET in networks:
        single_frame[piecewise.INSTANCE_NET] = networks[piecewise.INSTANCE_NET]
    spec = config.model.get("encoder_init", "scratch")
    pretrained_whole_tree = encoder_init.parse(spec)[0] == "params"
    if pretrained_whole_tree:
        params, batch_stats = monodepth.random_variables(single_frame, config, rng)
    else:
        params, batch_stats = monodepth.init_variables(single_frame, config, rng)
    depth_rng = jax.random.fold_in(rng, 2)
    h, w = config.data.height, config.data.width
    image = jnp.zeros((1, h, w, 3), jnp.float32)
    K = jnp.eye(4, dtype=jnp.float32)[None]
    depth_vars = networks["depth"].init(
        depth_rng, image, image[:, None], jnp.zeros((1, 1, 4, 4)), K, K, 0.1, 10.0, train=False
    )
    params = {**params, "depth": depth_vars["params"], "mono": params["depth"]}
    params = metric_init.apply(params, config, ("depth",))  # the mono net's was set above
    batch_stats = {**batch_stats, "depth": depth_vars["batch_stats"],
                   "mono": batch_stats["depth"]}
    if panoptic_plugin.HEAD in networks:  # on the multi-frame encoder; no batch_stats (GroupNorm)
        features = jax.eval_shape(lambda: networks["depth"].apply(
            depth_vars, image, image[:, None], jnp.zeros((1, 1, 4, 4)), K, K, 0.1, 10.0,
            train=False,
        )[1]["encoder_features"])
        params[panoptic_plugin.HEAD] = panoptic_plugin.init_head(
            networks[panoptic_plugin.HEAD], features, jax.random.fold_in(rng, 1)
        )
    if pretrained_whole_tree:
        return encoder_init.apply(params, batch_stats, spec)
    return params, batch_stats


def next_depth_bins(extra: dict, teacher_depth: jax.Array, step: jax.Array, joint: jax.Array,
                    config, axis_name: str | None = None) -> tuple[dict, dict]:
    """The cost volume's depth range after one step: ({"min_depth_bin", "max_depth_bin"}, stats).

    As the reference: an EMA of the teacher's batch ranges while the teacher trains, fixed after
    the freeze. `manydepth.bins_track_steps` = N > 0 (fine-tuning from a trained teacher, frozen
    from step 0): for the first N steps, frozen or not, the range is the running mean of the
    teacher's batch ranges (the first step takes the batch's range itself), so the bins cover the
    teacher's depths instead of staying at their initial 0.1 .. 10.

    Args:
      extra: the state's {"min_depth_bin", "max_depth_bin"} scalars.
      teacher_depth: `[B, H, W, 1]` the single-frame teacher's depth at scale 0.
      step: the state's step before this update; joint: bool, the teacher still trains.
    """
    c = config.manydepth
    tracking = step < c.get("bins_track_steps", 0)
    momentum = jnp.where(tracking, jnp.minimum(c.bins_momentum, step / (step + 1.0)),
                         c.bins_momentum)
    new_min, new_max, stats = md_losses.update_depth_bins(
        extra["min_depth_bin"], extra["max_depth_bin"], teacher_depth,
        min_depth=config.model.min_depth, momentum=momentum,
        margins=(c.bins_margin_min, c.bins_margin_max), axis_name=axis_name,
    )
    update = joint | tracking
    return ({"min_depth_bin": jnp.where(update, new_min, extra["min_depth_bin"]),
             "max_depth_bin": jnp.where(update, new_max, extra["max_depth_bin"])}, stats)


def init_extra(config) -> dict:
    """The adaptive depth range, initialised as the reference's trackers (0.1, 10)."""
    return {
        "min_depth_bin": np.float32(config.manydepth.bins_init_min),
        "max_depth_bin": np.float32(config.manydepth.bins_init_max),
    }


def matching_augmentation(rng: jax.Array, indices: jax.Array, config):
    """Per-sample (static_camera, zero_cost_volume) bool ``[B]`` draws, keyed by sample index.

    Keying by the sample's split index (as the automask noise) keeps the draws independent of how
    the batch is split over devices.
    """
    c = config.manydepth
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(rng, i)))(indices)
    if not c.matching_augmentation:
        no = jnp.zeros_like(u, bool)
        return no, no
    static = u < c.static_camera_prob
    zero = (u >= c.static_camera_prob) & (u < c.static_camera_prob + c.zero_cost_volume_prob)
    return static, zero


def _teacher_outputs(params, batch_stats, frames_aug, batch, joint, networks, config, source,
                     K, inv_K):
    """Poses and teacher disparity of both phases, selected by the traced flag ``joint``.

    Before the freeze: train mode (batch statistics, updated running statistics, gradients).
    After: eval mode (running statistics, frozen), without gradient. Both are computed and one is
    selected: XLA:CPU runs convolutions inside ``lax.cond`` branches about 10x slower than outside
    (jax-ml/jax#12868), so a cond over the phases costs far more than the two extra forward
    passes (teacher + 2 poses) this spends. With a pose-source plug-in (piece-wise pose,
    jdepth/training/plugins.py) both phases get their poses from it (its instance calls too).

    Returns:
      dict: ``poses`` {f: [B, 4, 4]} (global), ``warp_poses`` (the photometric warp's),
      ``disps`` {s: [B, h, w, 1]}, ``depth_aux``, ``pose_aux``, ``pose_extras``,
      ``pixel_weights`` (the pose source's, or None) and ``stats`` {"mono", "pose"}.
    """
    fixed = jax.lax.stop_gradient(params)
    mono_vars = {"params": params["mono"], "batch_stats": batch_stats["mono"]}
    (disps, mono_aux), updates = networks["mono"].apply(
        mono_vars, frames_aug[0], train=True, mutable=["batch_stats"]
    )
    frozen_disps, frozen_aux = networks["mono"].apply(
        {"params": fixed["mono"], "batch_stats": batch_stats["mono"]}, frames_aug[0], train=False
    )

    def pose_outputs(variables, train, disps_now):
        depth = geometry.disp_to_depth(disps_now[0], config.model.min_depth,
                                       config.model.max_depth)[1]
        return monodepth.step_poses(source, networks, variables, batch_stats, frames_aug, batch,
                                    train=train, ego_view=(depth, K, inv_K))

    live = pose_outputs(params, True, disps)
    frozen = pose_outputs(fixed, False, frozen_disps)

    def pick(new, old):
        return jax.tree_util.tree_map(
            lambda a, b: jnp.where(joint, a, jax.lax.stop_gradient(b)), new, old
        )

    return {
        "poses": pick(live.poses, frozen.poses),
        "warp_poses": pick(live.warp_poses, frozen.warp_poses),
        "pose_aux": pick(live.aux, frozen.aux),
        "pose_extras": pick(live.extras, frozen.extras),
        "pixel_weights": live.pixel_weights,  # the gating only: no train/eval difference
        "disps": pick(disps, frozen_disps),
        "depth_aux": pick(mono_aux, frozen_aux),
        "stats": {"mono": pick(updates["batch_stats"], batch_stats["mono"]),
                  "pose": pick(live.batch_stats, batch_stats["pose"])},
    }


def _loss_fn(params, batch_stats, extra, inputs, joint, *, networks, config, axis_name):
    """Total loss of one step and its aux (module docstring); ``joint`` is the phase flag."""
    frames, frames_aug = inputs["frames"], inputs["frames_aug"]
    model, loss_cfg = config.model, config.loss
    sources = {f: img for f, img in frames.items() if f != 0}
    pyramid = dict(enumerate(inputs["pyramid"]))
    common = dict(min_depth=model.min_depth, max_depth=model.max_depth,
                  ssim_weight=loss_cfg.ssim_weight, smoothness_weight=loss_cfg.smoothness_weight,
                  avg_reprojection=loss_cfg.avg_reprojection, axis_name=axis_name)
    live = joint.astype(jnp.float32)
    plugs = plugins_lib.build(config, networks, inputs["step"], "manydepth", axis_name)
    source = plugins_lib.pose_source(plugs)
    batch = inputs["batch"]

    teacher = _teacher_outputs(params, batch_stats, frames_aug, batch, joint, networks, config,
                               source, inputs["K"], inputs["inv_K"])
    poses, warp_poses, mono_disps = teacher["poses"], teacher["warp_poses"], teacher["disps"]
    pixel_weights = plugins_lib.pixel_weights(plugs, batch, teacher["pixel_weights"])
    # The teacher's loss is computed in both phases (logged) but only trains before the freeze.
    teacher_total, teacher_aux = md_losses.teacher_loss(
        mono_disps, frames[0], sources, warp_poses, inputs["K"], inputs["inv_K"], pyramid,
        key=inputs["sample_keys"], automask=loss_cfg.automask,
        automask_active=inputs.get("automask_active"),
        reduction=config.manydepth.get("teacher_reduction", "masked_mean"),
        pixel_weights=pixel_weights,
        depth_frozen_mask=plugins_lib.depth_frozen_mask(plugs, batch), **common,
    )
    total = jnp.where(joint, teacher_total, 0.0)
    aux = {**monodepth.pose_summary(poses), **teacher["pose_aux"],
           "teacher/loss": teacher_total, "teacher/photometric": teacher_aux["photometric"],
           "teacher/smoothness": teacher_aux["smoothness"], "teacher/frozen": 1.0 - live}
    if loss_cfg.get("velocity_weight", 0.0) > 0:
        speed = velocity_lib.velocity_loss(poses, inputs["velocity"], config.data.frame_interval)
        aux["velocity"] = speed
        total = total + jnp.where(joint, loss_cfg.velocity_weight * speed, 0.0)
    teacher_depths = jax.lax.stop_gradient(teacher_aux["depths"])
    # The teacher and the pose net are where the degenerate solution starts (README, "When
    # training collapses"); the multi-frame network inherits it through the consistency loss.
    aux.update(collapse.step_diagnostics(teacher_depths[0], warp_poses, inputs["K"],
                                         inputs["inv_K"], model.min_depth, model.max_depth))

    # The multi-frame loss and the matching never train the pose net (reference: detach). The
    # cost volume matches with the global pose: no instance masks exist at test time.
    fixed_poses = {f: jax.lax.stop_gradient(T) for f, T in poses.items()}
    fixed_warp = {f: jax.lax.stop_gradient(T) for f, T in warp_poses.items()}
    static, zero = inputs["static"], inputs["zero_cost_volume"]
    lookup_id = LOOKUP_FRAMES[0]
    lookup = jnp.where(static[:, None, None, None], frames[0], frames_aug[lookup_id])
    match_pose = fixed_poses[lookup_id] * (~zero).astype(jnp.float32)[:, None, None]
    depth_vars = {"params": params["depth"], "batch_stats": batch_stats["depth"]}
    (disps, multi_aux), updates = networks["depth"].apply(
        depth_vars, frames_aug[0], lookup[:, None], match_pose[:, None],
        inputs["K_match"], inputs["inv_K_match"],
        extra["min_depth_bin"], extra["max_depth_bin"], train=True, mutable=["batch_stats"],
    )
    consistency = md_losses.consistency_mask(
        multi_aux["confidence"], multi_aux["lowest_cost_depth"], teacher_depths[0],
        motion_masking=config.manydepth.motion_masking,
    )
    augmentation = (static | zero).astype(jnp.float32)
    multi_total, m_aux = md_losses.multi_frame_loss(
        disps, frames[0], sources, fixed_warp, inputs["K"], inputs["inv_K"], pyramid,
        teacher_depths, consistency, augmentation, pixel_weights=pixel_weights, **common,
    )
    total = total + multi_total
    new_stats = {**batch_stats, "depth": updates["batch_stats"], **teacher["stats"]}
    if any(p.loss is not None for p in plugs):
        plugin_inputs = monodepth.plugin_inputs(batch, frames, frames_aug, inputs["K"],
                                                inputs["inv_K"])
        multi_depth = geometry.disp_to_depth(disps[0], model.min_depth, model.max_depth)[1]
        outputs = {
            # The evaluated network: the panoptic head and the contrastive loss (ManyDepth+).
            "depth": {"disps": disps, "poses": fixed_poses, "depth_aux": multi_aux,
                      "depth": multi_depth, "pose_extras": None},
            # The single-frame teacher: ISSL and the piece-wise priors, with its poses.
            "single_frame": {"disps": mono_disps, "poses": poses,
                             "depth_aux": teacher["depth_aux"],
                             "depth": teacher_aux["depths"][0],  # with gradient (priors)
                             "pose_extras": teacher["pose_extras"]},
        }
        # The teacher's plug-ins train it only before the freeze, as its own loss.
        plugin_total, plugin_aux = plugins_lib.extra_losses(
            plugs, params, new_stats, plugin_inputs, outputs, inputs["plugin_rng"],
            gates={"single_frame": live})
        total = total + plugin_total
        aux.update({k: v for k, v in plugin_aux.items() if jnp.ndim(v) == 0})
    aux.update({
        "multi/loss": multi_total,
        "multi/photometric": m_aux["photometric"],
        "multi/consistency": m_aux["consistency"],
        "multi/smoothness": m_aux["smoothness"],
        "multi/reprojection_fraction": jnp.mean(m_aux["reprojection_mask"]),
        "multi/confidence_fraction": jnp.mean(multi_aux["confidence"]),
        "multi/augmentation_fraction": jnp.mean(augmentation),
    })
    return total, (aux, new_stats, teacher_depths[0])


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    networks: dict[str, nn.Module],
    config,
    axis_name: str | None,
) -> tuple[TrainState, Metrics]:
    """One optimisation step of ManyDepth (module docstring); ``(state, metrics)``."""
    step_rng = jax.random.fold_in(rng, state.step)
    frames, frames_aug, pyramid, K, inv_K = monodepth.prepare_batch(batch, config)
    static, zero = matching_augmentation(jax.random.fold_in(step_rng, 1), batch["index"], config)
    inputs = {
        "frames": frames, "frames_aug": frames_aug, "pyramid": pyramid, "K": K, "inv_K": inv_K,
        "K_match": batch["K"][:, MATCHING_SCALE], "inv_K_match": batch["inv_K"][:, MATCHING_SCALE],
        "sample_keys": monodepth.automask_noise_key(step_rng, batch["index"]),
        "static": static, "zero_cost_volume": zero,
        "plugin_rng": jax.random.fold_in(step_rng, 2), "step": state.step, "batch": batch,
    }
    active = monodepth.automask_active(config, state.step)  # loss.automask_start_step
    if active is not None:
        inputs["automask_active"] = active
    if config.loss.get("velocity_weight", 0.0) > 0:
        inputs["velocity"] = batch["velocity"][:, 0]
    joint = state.step < teacher_freeze.freeze_step(config)
    loss_fn = functools.partial(_loss_fn, networks=networks, config=config, axis_name=axis_name)
    (loss, (aux, batch_stats, teacher_depth)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(state.params, state.batch_stats, state.extra, inputs, joint)
    # Frozen: exact zeros for teacher and pose (their loss is already masked out; this also keeps
    # a non-finite teacher gradient from leaking through 0 * inf).
    for name in teacher_freeze.TEACHER_NETWORKS:
        if name not in grads:  # a separate instance pose net exists only with piece-wise pose
            continue
        grads[name] = jax.tree_util.tree_map(lambda g: jnp.where(joint, g, 0.0), grads[name])
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)

    extra, bin_stats = next_depth_bins(state.extra, teacher_depth, state.step, joint, config,
                                       axis_name)
    new_state = state.apply_gradients(grads, batch_stats, extra)
    metrics = {**aux, "loss": loss, "grad_norm": optax.global_norm(grads),
               "bins/min": extra["min_depth_bin"], "bins/max": extra["max_depth_bin"],
               "bins/teacher_min": bin_stats["batch_min_depth"],
               "bins/teacher_max": bin_stats["batch_max_depth"]}
    metrics["lr/multi"] = teacher_freeze.multi_learning_rate(
        config, config.train.get("steps_per_epoch") or 1, state.step
    )
    if axis_name is not None:
        metrics = jax.lax.pmean(metrics, axis_name)
    return new_state, metrics


def predict_disparity(
    params, batch_stats, extra, images: jax.Array, *, networks, config, context=None
) -> jax.Array:
    """Eval forward pass: scaled disparity at scale 0, ``[B, H, W, 1]``.

    Args:
      params, batch_stats: dicts keyed ``depth``, ``mono``, ``pose``.
      extra: holds the adaptive bins ``min_depth_bin`` / ``max_depth_bin``.
      images: ``[B, H, W, 3]`` frame 0 in [0, 1] at the training resolution.
      context: for the multi-frame network: ``lookup`` ``[B, H, W, 3]`` (frame -1), ``K``
        ``[B, 4, 4]`` pixel intrinsics at H x W, optional ``K_pyramid`` / ``inv_K_pyramid``
        ``[B, S, 4, 4]`` (the pipeline's per-scale intrinsics, which the cost volume then uses
        at the matching scale: needed for horizontally flipped samples), optional
        ``lookup_valid`` ``[B]`` bool (False: no cost volume for that sample, as a missing frame
        in the reference). The evaluation modes are inputs: static camera = ``lookup`` set to
        ``images``; zero cost volume = ``lookup_valid`` False. With ``config.eval.teacher`` the
        mono teacher predicts instead.
    """
    if config.eval.get("teacher", False):
        return monodepth.predict_disparity(
            {"depth": params["mono"]}, {"depth": batch_stats["mono"]}, None, images,
            networks={"depth": networks["mono"]}, config=config,
        )
    disps, _ = multi_frame_forward(
        params, batch_stats, extra, images, networks=networks, context=context
    )
    scaled_disp, _ = geometry.disp_to_depth(
        disps[0], config.model.min_depth, config.model.max_depth
    )
    return scaled_disp


def multi_frame_forward(params, batch_stats, extra, images, *, networks, context):
    """The multi-frame network in eval mode with the pose net's pose to the lookup frame.

    Args: as ``predict_disparity``.

    Returns:
      ``(disps, aux)`` of ``ManyDepthNet`` (``aux`` has the cost volume's ``lowest_cost_depth``
      and ``confidence`` at the matching resolution).
    """
    if context is None or "lookup" not in context or "K" not in context:
        raise ValueError(
            "manydepth.predict_disparity needs context={'lookup': frame -1, 'K': intrinsics}; "
            "DepthPredictor and depth_eval.predict_split pass them for multi-frame recipes"
        )
    lookup = context["lookup"]
    valid = context.get("lookup_valid")
    valid = jnp.ones(images.shape[:1], bool) if valid is None else valid
    if "K_pyramid" in context:
        # The pipeline mirrors cx per scale ((W/4 - 1) - cx/4 at the matching scale), which is
        # not the mirrored scale-0 cx divided by 4 (3/4 px apart), so a flipped sample needs the
        # pipeline's own matching-scale K, as the training step uses.
        if context["K_pyramid"].shape[1] <= MATCHING_SCALE:
            raise ValueError(f"manydepth: context K_pyramid has {context['K_pyramid'].shape[1]} "
                             f"scales; the cost volume needs scale {MATCHING_SCALE}")
        K_match = context["K_pyramid"][:, MATCHING_SCALE]
        inv_K_match = context["inv_K_pyramid"][:, MATCHING_SCALE]
    else:
        # Rows 0 and 1 of the scale-0 K divided by 4: exactly the pipeline's scale-2 intrinsics
        # for unflipped images (evaluation does not flip).
        factor = jnp.asarray([2.0**-MATCHING_SCALE, 2.0**-MATCHING_SCALE, 1.0, 1.0], jnp.float32)
        K_match = context["K"] * factor[None, :, None]
        inv_K_match = jnp.linalg.inv(K_match)
    pose_vars = {"params": params["pose"], "batch_stats": batch_stats["pose"]}
    (axisangle, translation), _ = networks["pose"].apply(pose_vars, lookup, images, train=False)
    pose = geometry.transformation_from_parameters(axisangle, translation, invert=True)
    pose = pose * valid.astype(pose.dtype)[:, None, None]
    depth_vars = {"params": params["depth"], "batch_stats": batch_stats["depth"]}
    return networks["depth"].apply(
        depth_vars, images, lookup[:, None], pose[:, None], K_match, inv_K_match,
        extra["min_depth_bin"], extra["max_depth_bin"], train=False,
    )


def _check_config(config) -> None:
    if config.loss.get("v1_multiscale", False):
        raise ValueError("the manydepth recipe implements full-res multiscale only "
                         "(loss.v1_multiscale=False)")
    if LOOKUP_FRAMES[0] not in tuple(config.data.frame_ids):
        raise ValueError(f"manydepth needs frame {LOOKUP_FRAMES[0]} in data.frame_ids")
    if len(config.model.scales) <= MATCHING_SCALE:
        raise ValueError("manydepth needs the scale-2 intrinsics: model.scales must have 4 entries")
    if config.model.get("scale_head", False):
        raise ValueError("the manydepth recipe has no scale head (config.model.scale_head=False); "
                         "the scale-aware student is recipe 'student'")
