"""The Monodepth2 recipe family: networks, init, the pure train step and the eval forward pass.

One step = depth on the jittered target, one pose per source frame, the full-resolution multi-scale
photometric objective on the un-augmented frames. The plug-ins the config switches on (piece-wise
pose, small-object masking, ISSL, panoptic head, contrastive loss) come in through the one
protocol of jdepth/training/plugins.py: pose source, pixel weights, extra losses. Recipes with
other networks (ManyDepth, students) have their own step module, call the same protocol and reuse
the pieces here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth import geometry
from jdepth.data import device_transforms
from jdepth.interop import encoder_init
from jdepth.losses import monodepth as monodepth_losses
from jdepth.losses import velocity as velocity_lib
from jdepth.models.depth_decoder import DepthNet
from jdepth.models.diffnet_decoder import HRDepthNet
from jdepth.models.pose_net import POSE_SCALE, PoseNet
from jdepth.training import collapse, metric_init, piecewise
from jdepth.training import panoptic as panoptic_plugin
from jdepth.training import plugins as plugins_lib
from jdepth.training.state import TrainState

Metrics = dict[str, jax.Array]


DEPTH_ARCHS = ("resnet", "hrnet")


def build_depth_network(config, bn_axis_name: str | None, dtype) -> nn.Module:
    """`config.model.depth_arch`: "resnet" (Monodepth2's DepthNet, the default) or "hrnet"
    (HRNet-18 + DIFFNet decoder, jdepth/models/diffnet_decoder.py; `model.scale_head` adds the
    Student-II global scale head). Both return `(disps, aux)` with aux["encoder_features"] (5
    levels, strides 2..32) and aux["decoder_features"] of the same shapes."""
    m = config.model
    arch = m.get("depth_arch", "resnet")
    if arch not in DEPTH_ARCHS:
        raise ValueError(f"config.model.depth_arch must be one of {DEPTH_ARCHS}, got {arch!r}")
    if arch == "resnet":
        if m.get("scale_head", False):
            raise ValueError("config.model.scale_head needs config.model.depth_arch='hrnet'")
        return DepthNet(
            num_layers=m.num_layers, scales=tuple(m.scales), bn_axis_name=bn_axis_name, dtype=dtype
        )
    if str(m.get("encoder_init", "scratch")).startswith("imagenet"):
        # The ImageNet files are torchvision ResNets; HRNet's (DIFFNet's OneDrive links) are gone.
        raise ValueError("model.encoder_init='imagenet:...' loads ResNet weights; with "
                         "depth_arch='hrnet' use 'scratch' or 'params:PATH'")
    return HRDepthNet(
        scales=tuple(m.scales),
        normalize_input=m.get("hrnet_normalize_input", True),
        scale_head=m.get("scale_head", False),
        scale_head_features=m.get("scale_head_features", 128),
        gamma_min=m.get("gamma_min", 0.1),
        gamma_max=m.get("gamma_max", 10.0),
        bn_axis_name=bn_axis_name,
        dtype=dtype,
    )


def build_networks(config, bn_axis_name: str | None = None) -> dict[str, nn.Module]:
    """The depth and pose networks of the recipe, as linen modules (pure `apply`)."""
    dtype = jnp.dtype(config.model.dtype)

    def pose_net():
        return PoseNet(
            num_layers=config.model.pose_num_layers,
            bn_axis_name=bn_axis_name,
            zero_init_output=config.model.get("pose_zero_init", False),
            # Metric runs: 1.0 (jdepth/training/metric_init.py).
            translation_scale=config.model.get("pose_translation_scale", POSE_SCALE),
            dtype=dtype,
        )

    networks = {"depth": build_depth_network(config, bn_axis_name, dtype), "pose": pose_net()}
    if piecewise.separate_network(config):
        networks[piecewise.INSTANCE_NET] = pose_net()
    if panoptic_plugin.head_enabled(config):
        networks[panoptic_plugin.HEAD] = panoptic_plugin.build_head(config, dtype)
    return networks


def init_variables(networks: dict[str, nn.Module], config, rng: jax.Array):
    """Initial (params, batch_stats), both dicts keyed by network name, with `model.encoder_init`'s
    pretrained weights put in (jdepth/interop/encoder_init.py)."""
    params, batch_stats = random_variables(networks, config, rng)
    return encoder_init.apply(params, batch_stats, config.model.get("encoder_init", "scratch"))


def random_variables(networks: dict[str, nn.Module], config, rng: jax.Array):
    """`init_variables` without `model.encoder_init` (recipes that embed these networks put the
    pretrained weights into their own whole tree)."""
    h, w = config.data.height, config.data.width
    image = jnp.zeros((1, h, w, 3), jnp.float32)
    depth_rng, pose_rng = jax.random.split(rng)
    depth_vars = networks["depth"].init(depth_rng, image, train=False)
    pose_vars = networks["pose"].init(pose_rng, image, image, train=False)
    params = {"depth": depth_vars["params"], "pose": pose_vars["params"]}
    batch_stats = {"depth": depth_vars["batch_stats"], "pose": pose_vars["batch_stats"]}
    if piecewise.INSTANCE_NET in networks:
        instance_vars = networks[piecewise.INSTANCE_NET].init(
            jax.random.fold_in(pose_rng, 1), image, image, train=False)
        params[piecewise.INSTANCE_NET] = instance_vars["params"]
        batch_stats[piecewise.INSTANCE_NET] = instance_vars["batch_stats"]
    if panoptic_plugin.HEAD in networks:  # no batch_stats: the head uses GroupNorm
        features = jax.eval_shape(
            lambda: networks["depth"].apply(depth_vars, image, train=False)[1]["encoder_features"]
        )
        params[panoptic_plugin.HEAD] = panoptic_plugin.init_head(
            networks[panoptic_plugin.HEAD], features, jax.random.fold_in(rng, 1)
        )
    return metric_init.apply(params, config), batch_stats  # model.init_depth


def predict_poses(
    pose_net: nn.Module, params, batch_stats, frames: dict[int, jax.Array], train: bool
) -> tuple[dict[int, jax.Array], Any]:
    """cam_T_cam from frame 0 to every other frame id, in Monodepth2's pair order.

    For f < 0 the network sees [I_f, I_0] and the matrix is inverted; for f > 0 it sees [I_0, I_f].
    Each pair is its own call (not one batched call) so BatchNorm statistics match the reference.

    Returns:
      ({f: [B, 4, 4]}, updated batch_stats).
    """
    poses = {}
    for f in sorted(k for k in frames if k != 0):
        pair = (frames[f], frames[0]) if f < 0 else (frames[0], frames[f])
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            ((axisangle, translation), _), updates = pose_net.apply(
                variables, *pair, train=True, mutable=["batch_stats"]
            )
            batch_stats = updates["batch_stats"]
        else:
            (axisangle, translation), _ = pose_net.apply(variables, *pair, train=False)
        poses[f] = geometry.transformation_from_parameters(axisangle, translation, invert=f < 0)
    return poses, batch_stats


def prepare_batch(batch: dict, config):
    """Device-side preprocessing: floats, jitter, per-frame dicts, scale-0 intrinsics."""
    color, color_aug, pyramid = device_transforms.prepare_images(
        batch["images"], batch["jitter"], len(config.model.scales)
    )
    color, color_aug, pyramid = jax.lax.optimization_barrier((color, color_aug, pyramid))
    frame_ids = tuple(config.data.frame_ids)
    frames = {f: color[:, i] for i, f in enumerate(frame_ids)}
    frames_aug = {f: color_aug[:, i] for i, f in enumerate(frame_ids)}
    return frames, frames_aug, pyramid, batch["K"][:, 0], batch["inv_K"][:, 0]


def automask_noise_key(rng: jax.Array, indices: jax.Array) -> jax.Array:
    """One key per sample, from the sample's index in the split.

    Keying the automask tie-breaking noise by the sample (not by device or batch position) makes a
    run on N devices produce exactly the numbers of a 1-device run with the same global batch.
    """
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(indices)


def automask_active(config, step: jax.Array) -> jax.Array | None:
    """1.0 once the automask is on (`loss.automask_start_step`), None when it always is."""
    start = int(config.loss.get("automask_start_step", 0))
    return None if start <= 0 else (step >= start).astype(jnp.float32)


def photometric_objective(
    disps, frames, pyramid, poses, K, inv_K, sample_keys, config, pixel_weights=None, step=None,
    depth_frozen_mask=None, axis_name=None,
):
    """The Monodepth2 objective for one set of predictions; returns (total, aux).

    `axis_name` (the step's pmap axis, or None): `pixel_weights` then weigh the global batch.
    """
    sources = {f: img for f, img in frames.items() if f != 0}
    return monodepth_losses.monodepth_loss(
        disps,
        frames[0],
        sources,
        poses,
        K,
        inv_K,
        {s: pyramid[s] for s in range(len(pyramid))},
        key=sample_keys,
        min_depth=config.model.min_depth,
        max_depth=config.model.max_depth,
        ssim_weight=config.loss.ssim_weight,
        smoothness_weight=config.loss.smoothness_weight,
        automask=config.loss.automask,
        avg_reprojection=config.loss.avg_reprojection,
        pixel_weights=pixel_weights,
        automask_active=None if step is None else automask_active(config, step),
        depth_frozen_mask=depth_frozen_mask,
        depth_normalization=config.loss.get("depth_normalization", False),
        axis_name=axis_name,
    )


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    networks: dict[str, nn.Module],
    config,
    axis_name: str | None,
    extra_plugins: tuple = (),
) -> tuple[TrainState, Metrics]:
    """One optimisation step of the Monodepth2 family.

    Args:
      state: TrainState with params/batch_stats {"depth", "pose", plug-in networks}.
      batch: one (per-device) batch from the pipeline (see jdepth.data.pipeline).
      rng: base key; the step's key is fold_in(rng, step), so resuming replays the same noise.
      networks: from `build_networks`.
      config: the experiment config (static).
      axis_name: pmap axis to average gradients over, or None under jit.
      extra_plugins: `plugins.Plugin`s a recipe adds to the ones its config switches on
        (jdepth/training/plugins.py; the student's distillation); they run after those.

    Returns:
      (new state, metrics) with every loss term by name.
    """
    if config.loss.get("depth_normalization", False) and config.loss.get("velocity_weight", 0.0):
        raise ValueError("config.loss.depth_normalization puts the translation in units of the "
                         "mean depth; it does not combine with the metric speed loss "
                         "(loss.velocity_weight)")
    step_rng = jax.random.fold_in(rng, state.step)
    plugs = plugins_lib.build(config, networks, state.step, "monodepth", axis_name) + list(
        extra_plugins)
    source = plugins_lib.pose_source(plugs)
    frames, frames_aug, pyramid, K, inv_K = prepare_batch(batch, config)
    sample_keys = automask_noise_key(step_rng, batch["index"])
    v1 = config.loss.get("v1_multiscale", False)
    if v1:
        if source is not None or any(p.pixel_weights is not None for p in plugs):
            raise ValueError("piece-wise pose and small-object masking weight the full-resolution "
                             "warp; they do not combine with config.loss.v1_multiscale")
        if config.loss.get("depth_normalization", False):
            raise ValueError("config.loss.depth_normalization is implemented for the "
                             "full-resolution multi-scale loss, not loss.v1_multiscale")
        source_pyramids = {
            f: [img] + [device_transforms.downscale(img, 2**s) for s in range(1, len(pyramid))]
            for f, img in frames.items() if f != 0
        }

    def loss_fn(params):
        depth_vars = {"params": params["depth"], "batch_stats": state.batch_stats["depth"]}
        (disps, depth_aux), depth_updates = networks["depth"].apply(
            depth_vars, frames_aug[0], train=True, mutable=["batch_stats"]
        )
        # Full-resolution target depth: the warp's, the plug-ins' and the diagnostics'.
        depth = geometry.disp_to_depth(disps[0], config.model.min_depth, config.model.max_depth)[1]
        posed = step_poses(source, networks, params, state.batch_stats, frames_aug, batch,
                           train=True, ego_view=(depth, K, inv_K))
        poses, warp_poses = posed.poses, posed.warp_poses
        if v1:
            total, aux = monodepth_losses.monodepth_loss_v1(
                disps, dict(enumerate(pyramid)),
                {f: dict(enumerate(p)) for f, p in source_pyramids.items()},
                poses, batch["K"], batch["inv_K"], key=sample_keys,
                min_depth=config.model.min_depth, max_depth=config.model.max_depth,
                ssim_weight=config.loss.ssim_weight,
                smoothness_weight=config.loss.smoothness_weight,
                automask=config.loss.automask, avg_reprojection=config.loss.avg_reprojection,
                automask_active=automask_active(config, state.step),
            )
        else:
            total, aux = photometric_objective(
                disps, frames, pyramid, warp_poses, K, inv_K, sample_keys, config,
                pixel_weights=plugins_lib.pixel_weights(plugs, batch, posed.pixel_weights),
                step=state.step,
                depth_frozen_mask=plugins_lib.depth_frozen_mask(plugs, batch),
                axis_name=axis_name,
            )
        # Networks without updates here (a separate instance pose net: its updates are
        # discarded, jdepth/training/piecewise.py) keep their statistics.
        batch_stats = {**state.batch_stats, "depth": depth_updates["batch_stats"],
                       "pose": posed.batch_stats}
        aux = {**aux, **pose_summary(poses), **posed.aux, **collapse.step_diagnostics(
            depth, warp_poses, K, inv_K, config.model.min_depth, config.model.max_depth,
            aux.get("identity_selection"), warp_depth=aux.get("depth"))}
        if config.loss.get("velocity_weight", 0.0) > 0:
            # Speed supervision: needs `data.load_velocity` (oxts vf of every frame).
            speed = velocity_lib.velocity_loss(
                poses, batch["velocity"][:, 0], config.data.frame_interval
            )
            aux = {**aux, "velocity": speed}
            total = total + config.loss.velocity_weight * speed
        if any(p.loss is not None for p in plugs):
            inputs = plugin_inputs(batch, frames, frames_aug, K, inv_K)
            outputs = {"disps": disps, "poses": poses, "depth_aux": depth_aux, "depth": depth,
                       "pose_extras": posed.extras}
            # One depth network: it is both the evaluated and the single-frame one.
            extra, extra_aux = plugins_lib.extra_losses(
                plugs, params, batch_stats, inputs,
                {"depth": outputs, "single_frame": outputs}, step_rng)
            total = total + extra
            aux = {**aux, **extra_aux}
        return total, (aux, batch_stats)

    (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
    new_state = state.apply_gradients(grads, batch_stats)
    metrics = {"loss": loss, **{k: v for k, v in aux.items() if jnp.ndim(v) == 0}}
    metrics["grad_norm"] = _global_norm(grads)
    if axis_name is not None:
        metrics = jax.lax.pmean(metrics, axis_name)
    return new_state, metrics


def step_poses(source, networks, params, batch_stats, frames_aug, batch, *, train: bool,
               ego_view) -> plugins_lib.PoseSource:
    """The step's poses: from the pose-source plug-in (jdepth/training/plugins.py) when there is
    one, else `predict_poses` (warp poses = global poses, no pixel weights).

    Args:
      source: `plugins.pose_source(...)`, or None.
      networks, params, batch_stats: by network name ("pose", and a separate instance pose net).
      frames_aug: {f: [B, H, W, 3]} the pose nets' inputs.
      batch: the step's batch (the plug-in's instance targets).
      train: train mode (False: a frozen pose net in eval mode, ManyDepth after its freeze).
      ego_view: (depth [B, H, W, 1], K, inv_K) for a source that warps by the ego pose.
    """
    if source is None:
        poses, stats = predict_poses(networks["pose"], params["pose"], batch_stats["pose"],
                                     frames_aug, train=train)
        return plugins_lib.PoseSource(poses, poses, stats, {})
    instance = None
    if piecewise.INSTANCE_NET in params:
        instance = (params[piecewise.INSTANCE_NET], batch_stats[piecewise.INSTANCE_NET])
    return source.poses(networks["pose"], params["pose"], batch_stats["pose"], frames_aug, batch,
                        train=train, ego_view=ego_view, instance_variables=instance)


def plugin_inputs(batch: dict, frames, frames_aug, K, inv_K) -> dict:
    """The `inputs` every step hands its plug-ins (jdepth/training/plugins.py)."""
    inputs = {
        "frames": frames, "frames_aug": frames_aug, "K": K, "inv_K": inv_K,
        "K_pyramid": batch["K"], "inv_K_pyramid": batch["inv_K"], "index": batch["index"],
        "batch": batch,
    }
    if "panoptic" in batch:
        inputs["panoptic"] = batch["panoptic"][:, 0]  # frame 0, flipped with the images
    return inputs


def pose_summary(poses: dict[int, jax.Array]) -> Metrics:
    """Batch means of the predicted motion, to see a pose net settle (or collapse) in the logs.

    Reports the translation of frame 0 -> the first later frame (cam_T_cam `[B, 4, 4]`): for a
    forward-driving camera t_z is negative and |t_x|, |t_y| are small. Gradients are stopped.
    """
    t = jax.lax.stop_gradient(poses[collapse.motion_frame(poses)][:, :3, 3])
    return {
        "pose/t_x": jnp.mean(t[:, 0]),
        "pose/t_y": jnp.mean(t[:, 1]),
        "pose/t_z": jnp.mean(t[:, 2]),
        "pose/t_norm": jnp.mean(jnp.linalg.norm(t, axis=-1)),
    }


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def predict_disparity(
    params, batch_stats, extra, images: jax.Array, *, networks, config
) -> jax.Array:
    """Eval forward pass: scaled disparity at scale 0, [B, H, W, 1] (evaluation inverts it).

    Args:
      params, batch_stats: dicts keyed by network name.
      extra: recipe state outside gradients (unused by this family).
      images: [B, H, W, 3] float in [0, 1] at the training resolution.
    """
    del extra
    variables = {"params": params["depth"], "batch_stats": batch_stats["depth"]}
    disps, aux = networks["depth"].apply(variables, images, train=False)
    scaled_disp, _ = geometry.disp_to_depth(
        disps[0], config.model.min_depth, config.model.max_depth
    )
    if "scale" in aux:  # scale-aware student: depth = gamma * depth, i.e. disparity / gamma
        scaled_disp = scaled_disp / aux["scale"][:, None, None, None]
    return scaled_disp
