"""Scale distillation from a multi-frame teacher (Shyam et al. Sec. 3.4, 4.2.3; DESIGN.md item 5).

The single-frame student predicts scale-invariant depth D_s and a global scale gamma; its absolute
depth gamma * D_s is pulled towards the frozen teacher's depth D_t with an L1 loss, weight 0.5 in
the paper ("knowledge distillation framework, enforced via L_1 loss", Sec. 3.4). The teacher's
depth carries the scale (ManyDepth's cost volume is built with the pose net's translation; the
speed loss makes it metric, DESIGN.md item 8), so gamma learns it.

What the loss trains is the caller's choice (jdepth/training/student.py): in the paper's mechanism
D_s arrives under stop_gradient and only gamma learns. Per image, the minimiser of
sum_i |gamma D_s,i - D_t,i| over gamma is the median of the pixel ratios D_t,i / D_s,i weighted
by D_s,i: the teacher/student median ratio when the two depth maps differ by a factor and noise
that does not depend on depth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def scale_distillation_loss(
    student_depth: jax.Array, gamma: jax.Array, teacher_depth: jax.Array, log_space: bool = False
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean |gamma * D_s - D_t| over all pixels of the batch (unweighted), or with `log_space`
    mean |log(gamma * D_s) - log(D_t)|.

    The L1 on depth (the paper's) is minimised over gamma by the median of the pixel ratios
    D_t / D_s weighted by D_s: the student's farthest pixels decide. The log-space L1 is minimised
    by the plain median ratio, the factor the evaluation's median scaling applies, and its
    gradient w.r.t. log(gamma) has the same size at any depth scale.

    Args:
        student_depth: `[B, H, W, 1]` scale-invariant student depth (stop its gradient to train
            only gamma).
        gamma: `[B]` global scale per image.
        teacher_depth: `[B, H, W, 1]` teacher depth (the caller stops its gradient).
        log_space: compare log depths (a deviation from the paper; module docstring).

    Returns:
        (loss, aux): the scalar L1 and logged scalars "distill/l1", "distill/gamma" and
        "distill/gamma_std" (batch mean and standard deviation), "distill/teacher_depth" and
        "distill/student_depth" (means of D_t and gamma * D_s), and "distill/median_ratio": the
        batch mean of per-image median(D_t) / median(gamma * D_s), 1 once the student's absolute
        scale matches the teacher's.
    """
    if student_depth.shape != teacher_depth.shape or student_depth.ndim != 4:
        raise ValueError(
            "jdepth/losses/distillation.py: student and teacher depth must both be [B, H, W, 1], "
            f"got {student_depth.shape} and {teacher_depth.shape}"
        )
    if gamma.shape != student_depth.shape[:1]:
        raise ValueError(
            f"jdepth/losses/distillation.py: gamma must be [B] = {student_depth.shape[:1]}, got "
            f"{gamma.shape}"
        )
    absolute = gamma.astype(jnp.float32)[:, None, None, None] * student_depth.astype(jnp.float32)
    teacher = teacher_depth.astype(jnp.float32)
    if log_space:
        loss = jnp.mean(jnp.abs(jnp.log(absolute) - jnp.log(teacher)))
    else:
        loss = jnp.mean(jnp.abs(absolute - teacher))
    b = absolute.shape[0]
    ratio = jnp.median(teacher.reshape(b, -1), axis=1) / jnp.median(absolute.reshape(b, -1), axis=1)
    aux = {
        "distill/l1": loss,
        "distill/gamma": jnp.mean(gamma),
        "distill/gamma_std": jax.lax.stop_gradient(jnp.std(gamma.astype(jnp.float32))),
        "distill/teacher_depth": jnp.mean(teacher),
        "distill/student_depth": jnp.mean(absolute),
        "distill/median_ratio": jax.lax.stop_gradient(jnp.mean(ratio)),
    }
    return loss, aux
