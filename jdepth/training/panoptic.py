"""The panoptic branch and the contrastive loss as a config-switched plug-in for depth recipes.

`config.panoptic.enabled` adds a YOSO-style head (jdepth/models/panoptic_head.py) on the depth
encoder's features of the target image and trains it with the Mask2Former set loss
(jdepth/losses/panoptic.py), weight `config.panoptic.weight` (0.35, paper Sec. 4.2.1).
`config.contrastive.enabled` adds the instance-aware contrastive loss (jdepth/losses/contrastive.py)
on the depth decoder's features, weight `config.contrastive.weight`. Both read the target frame's
panoptic labels, so both need `config.data.load_panoptic` (the pipeline then delivers
`batch["panoptic"]` [B, F, H, W], flipped with the images).

Both losses reach the shared encoder: the head runs on the encoder features of the main depth
pass (the colour-jittered target), so segmentation shapes the depth features, as in the paper.

Any recipe can plug it in: build the head with `build_head`, put its params under "panoptic",
and call the function from `make_extra_loss` with the depth pass's aux outputs (see
jdepth/training/monodepth.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jdepth.eval import panoptic as panoptic_eval
from jdepth.losses import contrastive as contrastive_lib
from jdepth.losses import panoptic as panoptic_loss_lib
from jdepth.models.panoptic_head import PanopticHead
from jdepth.training import plugin_warmup

HEAD = "panoptic"  # key of the head in networks / params


def _enabled(config, section: str) -> bool:
    cfg = config.get(section)
    return bool(cfg is not None and cfg.enabled)


def head_enabled(config) -> bool:
    """Whether the config switches the panoptic head on (no `panoptic` section: off)."""
    return _enabled(config, "panoptic")


def contrastive_enabled(config) -> bool:
    """Whether the config switches the contrastive loss on (no `contrastive` section: off)."""
    return _enabled(config, "contrastive")


def is_enabled(config) -> bool:
    """Whether the plug-in has anything to do."""
    return head_enabled(config) or contrastive_enabled(config)


def build_head(config, dtype=jnp.float32) -> PanopticHead:
    """The head described by `config.panoptic`."""
    cfg = config.panoptic
    if cfg.max_segments > cfg.num_proposals:
        raise ValueError(
            f"config.panoptic.max_segments ({cfg.max_segments}) must not exceed num_proposals "
            f"({cfg.num_proposals}): every ground-truth segment needs its own proposal"
        )
    return PanopticHead(
        num_classes=cfg.num_classes, num_proposals=cfg.num_proposals, hidden_dim=cfg.hidden_dim,
        agg_dim=cfg.agg_dim, num_stages=cfg.num_stages, ffn_dim=cfg.ffn_dim,
        num_heads=cfg.num_heads, num_cls_fcs=cfg.num_cls_fcs, num_mask_fcs=cfg.num_mask_fcs,
        temperature=cfg.temperature, dtype=dtype,
    )


def head_inputs(encoder_features):
    """The 4 encoder levels at strides 4..32 (ResNet: layer1..layer4; drops the stride-2 stem)."""
    return list(encoder_features[-4:])


def init_head(head: PanopticHead, encoder_features_shapes, rng: jax.Array):
    """Head params for encoder features of the given shapes (list of 5 ShapeDtypeStruct/arrays)."""
    dummy = [jnp.zeros(f.shape, jnp.float32) for f in head_inputs(encoder_features_shapes)]
    return head.init(rng, dummy)["params"]


def point_keys(rng: jax.Array, indices: jax.Array) -> jax.Array:
    """One key per sample for the set loss's point draws, from the sample's index in the split.

    As the automask noise (jdepth/training/monodepth.automask_noise_key): keyed by the sample,
    not its batch position, so N devices draw the points of a 1-device run.
    """
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(indices)


def make_extra_loss(networks: dict, config, step: jax.Array | int, axis_name: str | None = None):
    """The loss of the panoptic plug-in (jdepth/training/plugins.py).

    `step` (the state's step, may be traced) drives the warm-ups `panoptic.start_step` and
    `contrastive.start_step` (jdepth/training/plugin_warmup.py): before them the head trains on
    gradient-stopped encoder features and the contrastive weight is 0. `axis_name`: the pmap
    axis of the step (None under jit), over which the set loss's num_masks and class weights are
    summed (jdepth/losses/panoptic.py); without it a pmap run normalises per device.

    Returns:
      fn(params, batch_stats, inputs, outputs, rng) -> (loss, aux) reading
      `inputs["panoptic"]` [B, H, W] (target-frame labels), `outputs["depth_aux"]` (the depth
      pass's "encoder_features" and "decoder_features") and `params["panoptic"]`. aux holds
      "panoptic" / "contrastive" (weighted terms added to the total) and their components.
    """
    use_head, use_contrastive = head_enabled(config), contrastive_enabled(config)
    head_live = (plugin_warmup.active(step, plugin_warmup.start_step(config.panoptic))
                 if use_head else None)
    contrastive_live = (plugin_warmup.active(step, plugin_warmup.start_step(config.contrastive))
                        if use_contrastive else None)

    def extra_loss(params, batch_stats, inputs, outputs, rng):
        del batch_stats  # the head has no BatchNorm (GroupNorm; see its module docstring)
        if "panoptic" not in inputs:
            raise ValueError(
                "jdepth/training/panoptic.py: the panoptic head / contrastive loss needs panoptic "
                "labels in the batch; set config.data.load_panoptic=True"
            )
        labels = inputs["panoptic"]
        depth_aux = outputs["depth_aux"]
        total, aux = 0.0, {}
        if use_head:
            features = plugin_warmup.scale_gradient(
                head_inputs(depth_aux["encoder_features"]), head_live)
            stages, _ = networks[HEAD].apply({"params": params[HEAD]}, features)
            # Per-sample keys where the step passes the samples' split indices.
            keys = point_keys(rng, inputs["index"]) if "index" in inputs else rng
            raw, pan_aux = panoptic_loss_lib.panoptic_loss(
                stages, labels, keys, config.panoptic, axis_name=axis_name)
            weighted = config.panoptic.weight * raw
            aux.update(pan_aux)
            aux["panoptic"], aux["panoptic/unweighted"] = weighted, raw
            aux["panoptic/encoder_grad"] = head_live
            total = total + weighted
        if use_contrastive:
            raw, con_aux = contrastive_lib.multiscale_contrastive_loss(
                depth_aux["decoder_features"], labels, config.contrastive
            )
            weighted = config.contrastive.weight * contrastive_live * raw
            aux.update(con_aux)
            aux["contrastive"], aux["contrastive/unweighted"] = weighted, raw
            total = total + weighted
        return total, aux

    return extra_loss


def predict_panoptic(params, batch_stats, images: jax.Array, *, networks, config) -> jax.Array:
    """Eval forward pass: panoptic id maps [B, H, W] int32 (void -1) at the input resolution.

    Args:
      params, batch_stats: dicts keyed by network name ("depth", "panoptic").
      images: [B, H, W, 3] in [0, 1].
    """
    if config.get("recipe") == "manydepth":
        # The multi-frame network's encoder features depend on the lookup frame, which the
        # panoptic evaluation (jdepth/eval/panoptic.py) does not load.
        raise ValueError(
            "jdepth/training/panoptic.py: panoptic evaluation of the multi-frame (manydepth) "
            "network needs lookup frames, which jdepth/eval/panoptic.py does not load yet; the "
            "head trains with it but has no PQ evaluation"
        )
    depth_vars = {"params": params["depth"], "batch_stats": batch_stats["depth"]}
    _, depth_aux = networks["depth"].apply(depth_vars, images, train=False)
    stages, _ = networks[HEAD].apply(
        {"params": params[HEAD]}, head_inputs(depth_aux["encoder_features"])
    )
    last = stages[-1]
    b, h, w = images.shape[:3]
    masks = last["mask_logits"]
    # Bilinear, half-pixel centres (YOSO: F.interpolate align_corners=False) to the input size.
    masks = jax.image.resize(masks, (b, h, w, masks.shape[-1]), "bilinear")
    cfg = config.panoptic
    return jax.vmap(lambda c, m: panoptic_eval.panoptic_inference(
        c, m, object_mask_threshold=cfg.object_mask_threshold,
        overlap_threshold=cfg.overlap_threshold,
    ))(last["class_logits"], masks)


def predictor_panoptic_quality(predictor, split_file: str, max_images=None) -> dict | None:
    """PQ / SQ / RQ of a trained run's head on a split (None for runs without the head).

    Args:
      predictor: a `jdepth.inference.DepthPredictor` (its config, params and batch_stats).
      split_file: the split whose label PNGs are the ground truth.
      max_images: evaluate the first N frames only.
    """
    config = predictor.config
    networks = predictor.recipe.build_networks(config, bn_axis_name=None)
    if HEAD not in networks or predictor.lookup_offsets:  # multi-frame: see predict_panoptic
        return None
    predict = jax.jit(functools.partial(predict_panoptic, networks=networks, config=config))
    return panoptic_eval.evaluate_panoptic_split(
        lambda images: predict(predictor.params, predictor.batch_stats, images),
        config.data.root, split_file, predictor.height, predictor.width, max_images=max_images)
