"""ISSL (Cha et al.; jdepth/losses/issl.py) as a plug-in of the step protocol
(jdepth/training/plugins.py): the run's epochs for the theta_R schedule, the warm-up gate, and the
depth network that predicts the self-samples' depth."""

from __future__ import annotations

import math

import jax

from jdepth import geometry
from jdepth.losses import issl
from jdepth.training import plugin_warmup


def is_enabled(config) -> bool:
    """Whether the config switches ISSL on (configs without an ``issl`` section: off)."""
    section = config.get("issl")
    return bool(section is not None and section.enabled)


def training_epochs(config) -> tuple[int, int]:
    """``(steps_per_epoch, num_epochs)`` of the run, as jdepth.training.loop defines them."""
    steps_per_epoch = config.train.get("steps_per_epoch")
    if not steps_per_epoch:
        raise ValueError(
            "jdepth/losses/issl.py: ISSL's theta_R schedule needs config.train.steps_per_epoch "
            "(jdepth.training.loop sets it before building the step; set it when calling the "
            "step directly)"
        )
    max_steps = config.train.get("max_steps") or 0
    if max_steps > 0:
        num_epochs = math.ceil(max_steps / steps_per_epoch)
    else:
        num_epochs = config.train.num_epochs
    return int(steps_per_epoch), max(int(num_epochs), 1)


def make_extra_loss(depth_net, config, step: jax.Array, network: str = "depth"):
    """ISSL's loss for the plug-in protocol (jdepth/training/plugins.py).

    Args:
      depth_net: a single-frame depth network (linen module) returning `(disps, aux)`.
      config: the experiment config with an ``issl`` section and ``model.min_depth/max_depth``.
      step: the state's step (drives the theta_R schedule and the `issl.start_step` warm-up).
      network: the key of `depth_net`'s params / batch_stats ("depth"; ManyDepth: "mono").

    Returns:
      ``fn(params, batch_stats, inputs, outputs, rng) -> (loss, aux)`` reading
      ``inputs['frames_aug'][0]``, ``inputs['K']``, ``inputs['inv_K']``, ``inputs['index']`` and
      ``outputs['disps'][0]``; ``params``/``batch_stats`` are dicts keyed by network name.
    """
    issl_config = config.issl
    steps_per_epoch, num_epochs = training_epochs(config)
    theta_r = issl.theta_r_schedule(
        step, steps_per_epoch, num_epochs, issl_config.theta_r_start, issl_config.theta_r_end
    )
    live = plugin_warmup.active(step, plugin_warmup.start_step(issl_config))
    min_depth, max_depth = config.model.min_depth, config.model.max_depth

    def depth_fn(params, batch_stats, images):
        variables = {"params": params[network], "batch_stats": batch_stats[network]}
        # Train mode, running-statistics update dropped (see module docstring).
        (disps, _), _ = depth_net.apply(variables, images, train=True, mutable=["batch_stats"])
        return geometry.disp_to_depth(disps[0], min_depth, max_depth)[1]

    def extra_loss(params, batch_stats, inputs, outputs, rng):
        if "index" not in inputs:
            raise ValueError(
                "jdepth/training/issl_plugin.py: the step must pass inputs['index'] (sample indices) so "
                "the random transforms are keyed per sample"
            )
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(inputs["index"])
        depth = geometry.disp_to_depth(outputs["disps"][0], min_depth, max_depth)[1]
        weighted, aux = issl.issl_objective(
            depth_fn, params, batch_stats, inputs["frames_aug"][0], depth,
            inputs["K"], inputs["inv_K"], keys, theta_r, issl_config,
        )
        # Warm-up (jdepth/training/plugin_warmup.py): weight 0 before issl.start_step. The term
        # is still computed then (see plugin_warmup on why not lax.cond).
        weighted = live * weighted
        return weighted, {**aux, "issl": weighted}

    return extra_loss
