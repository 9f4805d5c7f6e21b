"""One plug-in protocol that every recipe family's train step calls.

A plug-in changes a step in up to three places, and a step asks all of its plug-ins at each:

  1. pose source (`Plugin.poses`): where the photometric warp's poses come from. The default is
     the recipe's pose net on whole frames; piece-wise pose replaces it with the thing-masked ego
     pose and per-instance poses composed per pixel. At most one plug-in may be a pose source.
  2. pixel weights (`Plugin.pixel_weights`): `[B, H, W, 1]` weights of the per-pixel photometric
     error (small-object masking, piece-wise pose's pixels without a pose); the step multiplies
     them. Also `Plugin.depth_frozen_mask`: pixels whose photometric error may not train depth.
  3. extra losses (`Plugin.loss`): `(params, batch_stats, inputs, outputs, rng) -> (loss, aux)`
     added to the total. `inputs` holds the step's frames, frames_aug, K, inv_K (scale 0), the
     pipeline's `K_pyramid` / `inv_K_pyramid` `[B, S, 4, 4]`, the samples' split `index`, the
     `batch` and, with labels, `panoptic` `[B, H, W]`; `outputs` holds `disps` and `depth_aux` of
     the network the plug-in reads, the global `poses`, the full-resolution `depth` and what the
     pose source adds (`pose_extras`).

The step families and what they hand the plug-ins:
  * Monodepth2 and the students (jdepth/training/monodepth.py, student.py): the depth net.
  * ManyDepth (jdepth/training/manydepth.py): the multi-frame network's outputs for the panoptic
    head and the contrastive loss (ManyDepth+); the single-frame teacher's for ISSL and the
    piece-wise priors (ISSL is a single-frame loss: its self-sample has no lookup frame and pose
    to match against), and the pose source feeds both photometric losses (teacher and
    multi-frame) while the cost volume keeps the global pose (piecewise.py on why).

`build(config, networks, step, family)` returns the plug-ins a config switches on, in a fixed
order (pose source first, then ISSL, panoptic / contrastive, then recipe-specific ones a step
appends, e.g. the student's distillation), so a step's program and its key folding do not depend
on how the config was written. Every plug-in is built inside the traced step (its warm-up gates
are traced values of the step), so switching one on never recompiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jdepth.losses import ground_contact, object_size
from jdepth.training import issl_plugin, piecewise
from jdepth.training import panoptic as panoptic_plugin

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

FAMILIES = ("monodepth", "manydepth")


@dataclasses.dataclass(frozen=True)
class PoseSource:
    """What a pose-source plug-in gives the step (shapes: `piecewise.train_poses`).

    poses: {f: `[B, 4, 4]`} global (ego) poses, for the pose summary, the speed loss, matching.
    warp_poses: {f: `[B, 4, 4]` or `[B, H, W, 4, 4]`} the photometric warp's transforms.
    batch_stats: the pose net's updated statistics.
    aux: log scalars.
    pixel_weights: `[B, H, W, 1]` or None.
    extras: handed to the same plug-in's `loss` as `outputs["pose_extras"]`.
    """

    poses: dict
    warp_poses: dict
    batch_stats: Any
    aux: dict
    pixel_weights: jax.Array | None = None
    extras: Any = None


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A plug-in: any of a pose source, pixel weights, a depth-frozen mask and an extra loss.

    name: for messages and logs.
    poses: `(pose_net, params, batch_stats, frames_aug, batch, *, train, ego_view) -> PoseSource`
      with `params` / `batch_stats` the pose net's, `train` False for eval-mode (frozen) poses and
      `ego_view` (depth `[B, H, W, 1]`, K, inv_K) or None.
    pixel_weights: `(batch) -> [B, H, W, 1]`.
    depth_frozen_mask: `(batch) -> [B, H, W, 1] bool or None`.
    loss: `(params, batch_stats, inputs, outputs, rng) -> (loss, aux)`.
    reads: which network's outputs the loss reads in a step with several ("single_frame": the
      ManyDepth teacher; "depth": the recipe's depth network, the evaluated one).
    """

    name: str
    poses: Callable[..., PoseSource] | None = None
    pixel_weights: Callable[[dict], jax.Array] | None = None
    depth_frozen_mask: Callable[[dict], jax.Array | None] | None = None
    loss: LossFn | None = None
    reads: str = "depth"


# --- the plug-ins ---------------------------------------------------------------------------


def piecewise_plugin(config, networks, step) -> Plugin:
    """Piece-wise pose (jdepth/training/piecewise.py) as pose source, weights and priors."""
    section = config.piecewise
    frame_ids = tuple(config.data.frame_ids)
    instance_net = networks.get(piecewise.INSTANCE_NET)

    def poses(pose_net, params, batch_stats, frames_aug, batch, *, train, ego_view,
              instance_variables=None):
        instance = None
        if instance_net is not None:
            instance = (instance_net, *instance_variables)
        global_T, warp, stats, aux, weights, motions = piecewise.train_poses(
            pose_net, params, batch_stats, frames_aug, batch, frame_ids, section, step,
            instance_net=instance, ego_view=ego_view, train=train)
        return PoseSource(global_T, warp, stats, aux, weights, motions)

    def loss(params, batch_stats, inputs, outputs, rng):
        del params, batch_stats, rng
        batch, depth = inputs["batch"], outputs["depth"]
        total, aux = jnp.float32(0.0), {}
        motions = outputs.get("pose_extras")
        if motions is not None:  # residual instance motions: logged, trained only with a weight
            prior, prior_aux = piecewise.motion_prior(motions, depth, inputs["inv_K"])
            aux.update(prior_aux)
            if section.get("motion_prior_weight", 0.0) > 0:
                total = total + section.motion_prior_weight * prior
        # Per-object depth priors: logged in every piece-wise run, trained only with a weight.
        masks, valid = piecewise.target_instances(batch, section, step)
        size, size_aux = object_size.size_prior(depth, masks, valid)
        contact, contact_aux = ground_contact.contact_prior(
            depth, masks, valid, batch["thing_mask"][:, 0])
        aux.update({**size_aux, **contact_aux})
        for weight, prior in (("size_prior_weight", size), ("contact_prior_weight", contact)):
            if section.get(weight, 0.0) > 0:
                total = total + section[weight] * prior
        return total, aux

    return Plugin(
        name="piecewise", poses=poses, loss=loss, reads="single_frame",
        depth_frozen_mask=lambda batch: piecewise.depth_frozen_mask(batch, section, step),
    )


def small_objects_enabled(config) -> bool:
    """Whether `config.masking.small_objects` is set (no `masking` section: off)."""
    section = config.get("masking")
    return bool(section is not None and section.get("small_objects", False))


def small_objects_plugin() -> Plugin:
    """Small-object masking (Shyam et al. Sec. 3): frame-0 thing pixels outside every instance of
    at least `masking.min_area_fraction` of the image (the pipeline's `small_object_mask`) get
    photometric weight 0."""

    def weights(batch):
        if "small_object_mask" not in batch:
            raise ValueError(
                "jdepth/training/plugins.py: small-object masking needs batch['small_object_mask']"
                "; the pipeline writes it when config.masking.small_objects and "
                "config.data.load_panoptic are set")
        return piecewise.photometric_weights(batch["small_object_mask"])

    return Plugin(name="small_objects", pixel_weights=weights)


def build(config, networks: dict, step: jax.Array, family: str,
          axis_name: str | None = None) -> list[Plugin]:
    """The plug-ins `config` switches on, in the fixed order of the module docstring.

    Args:
      config: the experiment config.
      networks: the recipe's linen modules by name.
      step: the state's step (traced): drives every warm-up gate.
      family: "monodepth" (Monodepth2, students) or "manydepth".
      axis_name: the step's pmap axis, or None: batch-level normalisations (the panoptic set
        loss's mask count) then cover the global batch.
    """
    if family not in FAMILIES:
        raise ValueError(f"jdepth/training/plugins.py: family must be one of {FAMILIES}, "
                         f"got {family!r}")
    single_frame = "depth" if family == "monodepth" else "mono"
    plugins = []
    if piecewise.is_enabled(config):
        plugins.append(piecewise_plugin(config, networks, step))
    if small_objects_enabled(config):
        plugins.append(small_objects_plugin())
    if issl_plugin.is_enabled(config):
        plugins.append(Plugin(
            name="issl", reads="single_frame",
            loss=issl_plugin.make_extra_loss(networks[single_frame], config, step,
                                             network=single_frame)))
    if panoptic_plugin.is_enabled(config):
        plugins.append(Plugin(name="panoptic",
                              loss=panoptic_plugin.make_extra_loss(networks, config, step,
                                                                   axis_name)))
    return plugins


def pose_source(plugins: list[Plugin]) -> Plugin | None:
    """The one plug-in that supplies poses, or None (the recipe's own pose call)."""
    sources = [p for p in plugins if p.poses is not None]
    if len(sources) > 1:
        raise ValueError("jdepth/training/plugins.py: more than one pose source: "
                         f"{[p.name for p in sources]}")
    return sources[0] if sources else None


def pixel_weights(plugins: list[Plugin], batch: dict, source_weights: jax.Array | None = None):
    """The product of every plug-in's pixel weights and the pose source's (`PoseSource.
    pixel_weights`, None for none), or None."""
    weights = [] if source_weights is None else [source_weights]
    weights += [p.pixel_weights(batch) for p in plugins if p.pixel_weights is not None]
    if not weights:
        return None
    total = weights[0]
    for w in weights[1:]:
        total = total * w
    return total


def depth_frozen_mask(plugins: list[Plugin], batch: dict):
    """The union of the plug-ins' depth-frozen masks `[B, H, W, 1]` bool, or None."""
    masks = [m for m in (p.depth_frozen_mask(batch) for p in plugins
                         if p.depth_frozen_mask is not None) if m is not None]
    if not masks:
        return None
    total = masks[0]
    for m in masks[1:]:
        total = total | m
    return total


def extra_losses(plugins: list[Plugin], params, batch_stats, inputs: dict, outputs: dict,
                 rng: jax.Array, gates: dict[str, jax.Array] | None = None):
    """Sum of the plug-ins' losses and their aux; each plug-in gets its own key.

    Args:
      outputs: {reads: outputs dict}: each plug-in gets the outputs of the network it `reads`.
      gates: optional {reads: scalar 0/1}: the loss of a plug-in reading that network is
        multiplied by it (ManyDepth: the frozen teacher's plug-ins are logged, not added).

    Returns:
      (total, aux). The key of plug-in number n (from 1, in list order) is fold_in(rng, n).
    """
    total, aux = jnp.float32(0.0), {}
    for number, plugin in enumerate(plugins, start=1):
        if plugin.loss is None:
            continue
        loss, plugin_aux = plugin.loss(params, batch_stats, inputs, outputs[plugin.reads],
                                       jax.random.fold_in(rng, number))
        if gates is not None and plugin.reads in gates:
            loss = gates[plugin.reads] * loss
        total = total + loss
        aux.update(plugin_aux)
    return total, aux


def pipeline_settings(config) -> dict[str, Any]:
    """`PipelineConfig` fields the plug-ins need (instance targets, small-object mask)."""
    settings = piecewise.pipeline_settings(config)
    if small_objects_enabled(config):
        if not config.data.get("load_panoptic", False):
            raise ValueError("jdepth/training/plugins.py: config.masking.small_objects needs "
                             "panoptic labels; set config.data.load_panoptic=True")
        settings["small_object_area"] = float(config.masking.get("min_area_fraction", 0.01))
    return settings
