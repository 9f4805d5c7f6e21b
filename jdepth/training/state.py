"""Train state and optimizer: a pytree that pmap/jit and orbax handle without special cases."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jdepth.models.scale_head import GLOBAL_SCALE
from jdepth.training.piecewise import INSTANCE_NET

# Optimizer group of each network name under `pose_lr_scale` (others: "other").
_GROUPS = {"depth": "depth", "pose": "pose", INSTANCE_NET: "pose"}


@struct.dataclass
class TrainState:
    """Everything a train step reads and writes.

    `params` and `batch_stats` are dicts keyed by network name ("depth", "pose", ...), so recipes add
    networks without a new state class. The step counter is the single source of truth for the LR
    schedule, the RNG stream and the epoch. `skipped_steps` counts updates dropped for a
    non-finite gradient (`apply_gradients`).
    """

    step: Any
    params: Any
    batch_stats: Any
    opt_state: Any
    extra: Any  # recipe state that is not trained by gradients (e.g. ManyDepth's adaptive bins)
    skipped_steps: Any
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, params, batch_stats, tx, extra=None):
        return cls(
            step=0,
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            extra=extra if extra is not None else {},
            # Strictly typed like the update's result: a weak int would retrace the step once.
            skipped_steps=jnp.zeros((), jnp.int32),
            tx=tx,
        )

    def apply_gradients(self, grads, batch_stats, extra=None):
        """One optimizer update; a step whose gradient is not finite changes nothing but `step`.

        A single NaN or inf anywhere in the gradient (a float32 edge case in one pixel's backward
        pass, once in thousands of steps) would otherwise poison every parameter and Adam moment
        for good. Such a step keeps params, optimizer moments, BatchNorm statistics and `extra`,
        and counts itself in `skipped_steps`; the step counter still advances, so the data
        stream, RNG and schedules stay aligned. The train loop stops the run when skipped steps
        accumulate (`train.max_skipped_steps`) or the loss itself is not finite.
        """
        finite = jnp.all(jnp.asarray(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
        old = {"params": self.params, "opt_state": self.opt_state,
               "batch_stats": self.batch_stats, "extra": self.extra}

        def update():
            updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
            return {
                "params": optax.apply_updates(self.params, updates),
                "opt_state": opt_state,
                "batch_stats": batch_stats,
                "extra": self.extra if extra is None else extra,
            }

        # One conditional around the whole update: a skipped step runs no optimizer arithmetic,
        # and the update itself is not followed by a select of every leaf between new and old
        # values (which doubled its memory traffic). XLA also cannot fuse the predicate's reduction
        # over every gradient leaf into per-leaf work, which made XLA:CPU's fusion pass quadratic
        # in the leaf count (HRNet's ~1000 leaves compiled for over 15 minutes).
        kept = jax.lax.cond(finite, update, lambda: old)
        return self.replace(
            step=self.step + 1,
            skipped_steps=self.skipped_steps + (1 - finite.astype(jnp.int32)),
            **kept,
        )


def learning_rate_schedule(lr: float, steps_per_epoch: int, decay_epochs, decay_factor: float,
                           warmup_steps: int = 0):
    """Piecewise-constant LR: times `decay_factor` at the start of each epoch in `decay_epochs`.

    Monodepth2's StepLR(15) was meant to give 15 epochs at 1e-4 then 5 at 1e-5 (PyTorch 0.4.1); with
    PyTorch >= 1.1 the reference steps the scheduler before the epoch, so it decays after 14. We use
    the intended 15 (config `optim.decay_epochs`); set (14,) to match a modern-PyTorch run.

    `warmup_steps` > 0 ramps the rate linearly from lr / warmup_steps at step 0 to lr at step
    warmup_steps - 1 (not in the reference). Adam's first steps move every weight by about the
    learning rate whatever the gradient's size; from scratch that lets the pose translation jump
    past the warps' basin in a few steps (README, "When training collapses").
    """
    boundaries = {int(e) * steps_per_epoch: decay_factor for e in decay_epochs}
    schedule = optax.piecewise_constant_schedule(lr, boundaries)
    if warmup_steps <= 0:
        return schedule
    return lambda step: schedule(step) * jnp.minimum(1.0, (step + 1.0) / warmup_steps)


def schedule_from_config(optim_cfg, steps_per_epoch: int):
    """`learning_rate_schedule` from an `optim` config section."""
    return learning_rate_schedule(optim_cfg.lr, steps_per_epoch, optim_cfg.decay_epochs,
                                  optim_cfg.decay_factor, int(optim_cfg.get("warmup_steps", 0)))


def make_optimizer(optim_cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with the step schedule (torch.optim.Adam defaults: betas 0.9/0.999, eps 1e-8).

    `optim_cfg.hold_depth_steps` > 0 keeps the "depth" network fixed (learning rate 0) for that
    many steps while every other network trains: a from-scratch pose net then finds the camera's
    direction of motion against a featureless depth map before the depth net can co-adapt to a
    wrong one (configs/demo.py). Adam's moments still accumulate during the hold.
    `optim_cfg.pose_lr_scale` multiplies the "pose" network's learning rate (its outputs are
    scaled by 0.01, so from scratch it is the slow learner of the pair), and that of a separate
    instance pose net ("instance_pose", jdepth/training/piecewise.py).
    `optim.scale_lr_scale` multiplies the learning rate of Student-II's global log-scale (every
    parameter named `global_log_scale`, jdepth/models/scale_head.py): a single scalar that must
    travel several log-units to the teacher's scale, which Adam at the networks' rate does in
    thousands of steps. It follows the same schedule and is never held. Its Adam sees the SIGN of
    the gradient: the L1's gradient w.r.t. log(gamma) is sign(gamma D_s - D_t) x gamma D_s, so
    its size follows the student's depth scale, which swings by two decades early from scratch;
    fed raw, Adam's second moment keeps the largest of those for ~1000 steps and then moves the
    scalar by a negligible step while the sign asks for a factor 50 (RESULTS.md, issue 24). On
    signs Adam's update is the running mean of the signs: it turns within ~10 steps, and it
    shrinks where the signs alternate, at the L1's minimiser.
    """
    schedule = schedule_from_config(optim_cfg, steps_per_epoch)

    def adam(learning_rate):
        return optax.adam(learning_rate, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=1e-8)

    hold = int(optim_cfg.get("hold_depth_steps", 0))
    pose_scale = float(optim_cfg.get("pose_lr_scale", 1.0))
    scale_scale = float(optim_cfg.get("scale_lr_scale", 1.0))
    if hold > 0 or pose_scale != 1.0 or scale_scale != 1.0:
        groups = {
            "depth": adam(lambda step: jnp.where(step < hold, 0.0, schedule(step))),
            "pose": adam(lambda step: pose_scale * schedule(step)),
            "other": adam(schedule),
        }
        if scale_scale != 1.0:  # only then: other recipes' optimizer state keeps its structure
            groups["scale"] = optax.chain(
                optax.stateless(lambda updates, params=None: jax.tree_util.tree_map(
                    jnp.sign, updates)),
                adam(lambda step: scale_scale * schedule(step)))

        def label(name, path):
            if "scale" in groups and getattr(path[-1], "key", None) == GLOBAL_SCALE:
                return "scale"
            return _GROUPS.get(name, "other")

        tx = optax.multi_transform(
            groups,
            lambda params: {
                name: jax.tree_util.tree_map_with_path(
                    lambda path, _, name=name: label(name, path), sub)
                for name, sub in params.items()
            },
        )
    else:
        tx = adam(schedule)
    if optim_cfg.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), tx)
    return tx


def param_count(params) -> int:
    """Number of trainable scalars in a params pytree."""
    return sum(x.size for x in flax.traverse_util.flatten_dict(params).values())
