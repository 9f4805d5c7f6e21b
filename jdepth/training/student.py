"""The single-frame student recipe: HRDepth+ (Student-I) and HRDepth++ (Student-II).

Shyam et al. Sec. 3.4 / 4.2.3. The student is the Monodepth2 family's step unchanged (depth net,
pose net, photometric objective, and the ISSL / panoptic / contrastive / piece-wise plug-ins its
config switches on), with the depth network chosen by `config.model.depth_arch` (HRNet-18 +
DIFFNet decoder for the paper's students). Student-II adds:

* `config.model.scale_head`: gamma = one learnt global scale x a per-image factor
  (jdepth/models/scale_head.py), with its own optimizer group (`optim.scale_lr_scale`);
* `config.distill.teacher_workdir`: a trained multi-frame teacher (a ManyDepth recipe workdir,
  any recipe works) restored frozen; each step it predicts depth D_t on the un-jittered frame 0
  with its lookup frames, in eval mode and without gradient, and the plug-in adds
  `distill.weight` x L1(gamma x D_s, D_t) (jdepth/losses/distillation.py, weight 0.5; on log
  depths with `distill.log_space`).

What the distillation trains (`distill.depth_gradient`):

* False (the paper's mechanism, the default): only gamma. D_s enters the L1 under stop_gradient
  and the scale head reads the encoder under stop_gradient (jdepth/models/scale_head.py, in both
  settings), so the depth network learns from the photometric objective alone and one global
  factor, learnt from the teacher, makes its relative depth absolute ("This pseudo-absolute
  depth can then be harnessed to train a single global scale factor", Sec. 3.4).
* True (a deviation, kept as an ablation): the L1 also trains D_s, i.e. dense depth distillation.
  The photometric loss is invariant to scaling depth and translation together, so every split of
  the scale between gamma and D_s then has the same loss and gradient: gamma is not identifiable.

Evaluation of Student-II is absolute: `predict_disparity` returns 1 / (gamma x D_s) and
`config.eval.absolute_depth` switches the median scaling off; `predict_scale` gives gamma alone.

Where the teacher lives: its variables are `state.extra["teacher"]` ({params, batch_stats,
extra} as its checkpoint stores them), i.e. arguments of the compiled step. Closing over them
instead would embed tens of MB of weights as constants in the step's program. Being in the
state, they are saved with the student's checkpoints; building the student's state (training,
resuming, and the restore target of evaluation) reads the teacher workdir's config.json, and
starting a run reads its checkpoint (`distill.teacher_step`, default the latest).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jdepth import geometry
from jdepth.losses import distillation
from jdepth.training import checkpoint, monodepth, plugins, recipes
from jdepth.training.state import TrainState

Metrics = dict[str, jax.Array]

TEACHER = "teacher"  # key of the teacher in `networks` and in `state.extra`


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen teacher: its run's config, recipe module name and networks (no variables)."""

    config: Any
    networks: dict[str, nn.Module]

    @property
    def recipe(self):
        return recipes.get(self.config.recipe)

    def lookup_frames(self) -> tuple[int, ...]:
        return _lookup_frames(self.config)


def _lookup_frames(t_config) -> tuple[int, ...]:
    """Frames besides 0 the teacher's eval pass needs (recipe protocol; none if single-frame)."""
    return tuple(getattr(recipes.get(t_config.recipe), "lookup_frames", lambda c: ())(t_config))


def teacher_config(config):
    """The teacher run's config (from its workdir), or None without `distill.teacher_workdir`."""
    section = config.get("distill")
    workdir = None if section is None else section.get("teacher_workdir")
    return checkpoint.load_config(workdir) if workdir else None


def _student(networks: dict) -> dict[str, nn.Module]:
    return {k: v for k, v in networks.items() if k != TEACHER}


def build_networks(config, bn_axis_name: str | None = None) -> dict[str, Any]:
    """The Monodepth2 family's networks, plus `Teacher` under "teacher" when one is configured."""
    networks = monodepth.build_networks(config, bn_axis_name)
    t_config = teacher_config(config)
    _check_config(config, t_config)
    if t_config is not None:
        t_recipe = recipes.get(t_config.recipe)
        networks[TEACHER] = Teacher(t_config, t_recipe.build_networks(t_config, bn_axis_name=None))
    return networks


def init_variables(networks: dict, config, rng: jax.Array):
    """The student's initial (params, batch_stats); the teacher's are in `init_extra`."""
    return monodepth.init_variables(_student(networks), config, rng)


def init_extra(config) -> dict:
    """{"teacher": the restored teacher model item} or {} without a teacher.

    Under abstract evaluation (`recipes.abstract_state_tree`, the restore target of the student's
    own checkpoints) only the teacher's shapes are needed: its checkpoint is not read then.
    """
    t_config = teacher_config(config)
    if t_config is None:
        return {}
    target = recipes.abstract_state_tree(t_config)
    if isinstance(jnp.zeros(()), jax.core.Tracer):  # inside jax.eval_shape: shapes only
        return {TEACHER: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), target)}
    restored, _ = checkpoint.restore_params(
        config.distill.teacher_workdir, target, config.distill.get("teacher_step")
    )
    return {TEACHER: restored}


def teacher_depth(teacher: Teacher, variables: dict, frames: dict, K_pyramid: jax.Array,
                  inv_K_pyramid: jax.Array) -> jax.Array:
    """The frozen teacher's depth of frame 0, `[B, H, W, 1]`, without gradient.

    Args:
        teacher: from `build_networks`.
        variables: {"params", "batch_stats", "extra"} of the teacher (`state.extra["teacher"]`).
        frames: {frame id: `[B, H, W, 3]`} un-jittered frames; the teacher's lookup frames must be
            among them (ManyDepth: -1).
        K_pyramid, inv_K_pyramid: `[B, S, 4, 4]` the pipeline's per-scale pixel intrinsics (scale
            0 at H x W). A multi-frame teacher matches with its matching scale's entry, which on
            flipped samples is not scale 0's divided by the scale factor.
    """
    variables = jax.lax.stop_gradient(variables)
    lookup = teacher.lookup_frames()
    kwargs = {}
    if lookup:  # multi-frame teacher: eval-mode cost volume with its pose net's pose (eval mode)
        kwargs["context"] = {"lookup": frames[lookup[0]], "K": K_pyramid[:, 0],
                             "K_pyramid": K_pyramid, "inv_K_pyramid": inv_K_pyramid}
    scaled_disp = teacher.recipe.predict_disparity(
        variables["params"], variables["batch_stats"], variables["extra"], frames[0],
        networks=teacher.networks, config=teacher.config, **kwargs,
    )
    return jax.lax.stop_gradient(1.0 / scaled_disp)


def distillation_term(outputs: dict, target: jax.Array, config) -> tuple[jax.Array, Metrics]:
    """`distill.weight` x L1(gamma x D_s, D_t) of a depth-network output and the teacher's depth.

    Args:
        outputs: the step's outputs: `outputs["disps"][0]` (full-resolution sigmoid disparity)
            and, with the scale head, `outputs["depth_aux"]["scale"]` (gamma `[B]`); without one
            gamma is 1 (plain depth distillation, which needs `distill.depth_gradient`).
        target: `[B, H, W, 1]` teacher depth (`teacher_depth`).
        config: the run's config (`model.min_depth`, `model.max_depth`, the `distill` section).

    Returns:
        (weighted loss, logged scalars incl. "distill": the weighted loss).
    """
    _, student = geometry.disp_to_depth(
        outputs["disps"][0], config.model.min_depth, config.model.max_depth
    )
    gamma = outputs["depth_aux"].get("scale")
    if gamma is None:
        gamma = jnp.ones(student.shape[:1], jnp.float32)
    if not config.distill.get("depth_gradient", False):
        # The paper's mechanism: the teacher trains the global factor only (module docstring).
        student = jax.lax.stop_gradient(student)
    raw, aux = distillation.scale_distillation_loss(
        student, gamma, target, log_space=config.distill.get("log_space", False))
    weighted = config.distill.weight * raw
    return weighted, {**aux, "distill": weighted}


def make_distillation_loss(teacher: Teacher, teacher_variables: dict, config):
    """The loss of the distillation plug-in (jdepth/training/plugins.py) of the student's step."""

    def extra_loss(params, batch_stats, inputs, outputs, rng):
        del params, batch_stats, rng
        target = teacher_depth(teacher, teacher_variables, inputs["frames"], inputs["K_pyramid"],
                               inputs["inv_K_pyramid"])
        return distillation_term(outputs, target, config)

    return extra_loss


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    networks: dict,
    config,
    axis_name: str | None,
) -> tuple[TrainState, Metrics]:
    """The Monodepth2 family's step (`monodepth.train_step`) + the distillation plug-in."""
    extra = ()
    if TEACHER in networks:
        extra = (plugins.Plugin(name="distillation", loss=make_distillation_loss(
            networks[TEACHER], state.extra[TEACHER], config)),)
    return monodepth.train_step(
        state, batch, rng, networks=_student(networks), config=config, axis_name=axis_name,
        extra_plugins=extra,
    )


def predict_disparity(
    params, batch_stats, extra, images: jax.Array, *, networks, config
) -> jax.Array:
    """Eval forward pass, `[B, H, W, 1]`: 1 / (gamma x depth) with a scale head, else as Monodepth2.

    The teacher (in `extra` and `networks`) is not used.
    """
    return monodepth.predict_disparity(
        params, batch_stats, extra, images, networks=_student(networks), config=config
    )


def predict_scale(params, batch_stats, images: jax.Array, *, networks, config) -> jax.Array:
    """The scale head's gamma, `[B]` float32 (eval mode): the global factor of Student-II."""
    del config
    depth_net = _student(networks)["depth"]
    variables = {"params": params["depth"], "batch_stats": batch_stats["depth"]}
    _, aux = depth_net.apply(variables, images, train=False)
    if "scale" not in aux:
        raise ValueError("predict_scale needs the scale head (config.model.scale_head)")
    return aux["scale"]


def _check_config(config, t_config) -> None:
    scale_head = bool(config.model.get("scale_head", False))
    if scale_head and t_config is None:
        raise ValueError(
            "config.model.scale_head is only trained by distillation: set "
            "--config.distill.teacher_workdir to a trained teacher's workdir"
        )
    if config.eval.get("absolute_depth", False) and not scale_head:
        raise ValueError("config.eval.absolute_depth needs the scale head (config.model.scale_head)")
    if t_config is None:
        return
    if not scale_head and not config.distill.get("depth_gradient", False):
        raise ValueError(
            "without config.model.scale_head the distillation only reaches the student through "
            "its depth: set --config.distill.depth_gradient=True (dense depth distillation) or turn "
            "the scale head on"
        )
    size, t_size = (config.data.height, config.data.width), (t_config.data.height,
                                                            t_config.data.width)
    if size != t_size:
        raise ValueError(f"the student trains at {size} but the teacher at {t_size}; the teacher "
                         "runs on the student's frames and must share the resolution")
    missing = [f for f in _lookup_frames(t_config) if f not in tuple(config.data.frame_ids)]
    if missing:
        raise ValueError(f"the teacher needs frames {missing}; add them to config.data.frame_ids")
