"""Every plug-in in every recipe family's step (jdepth/training/plugins.py), each compiled once.

Piece-wise pose, small-object masking, ISSL, the panoptic head and the contrastive loss are all
switched on at once in the Monodepth2 step, the student step (with the distillation plug-in of a
real teacher workdir) and the ManyDepth step (across the teacher freeze), at 64x64 with tiny
plug-in sizes. And ManyDepth's piece-wise wiring is checked against the plain step: on a batch
without any thing pixel, piece-wise pose changes nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config, random_batch
from panoptic_helpers import fast_compiles, fill_like  # noqa: F401 (autouse fixture)

from jdepth.data import instances
from jdepth.training import checkpoint, manydepth, panoptic_config, recipes, student
from jdepth.training import parallel as parallel_lib
from jdepth.training.state import TrainState

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_compiles")]

SIZE = 64
SLOTS = 2


def _tiny_plugins(config):
    """Every plug-in on, at sizes that keep the compile short."""
    panoptic_config.enable_paper_components(config)
    config.data.height = config.data.width = SIZE
    config.train.batch_size = 2
    config.train.steps_per_epoch = 10
    config.train.progress_bar = False
    config.piecewise.max_instances = SLOTS
    config.issl.enabled = True
    config.issl.num_samples = 1
    config.panoptic.update(dict(num_proposals=8, hidden_dim=16, agg_dim=8, ffn_dim=32,
                                num_heads=2, num_cls_fcs=1, num_mask_fcs=1, max_segments=6))
    return config


def _labelled_batch(config, seed=0, things=True):
    """`random_batch` + panoptic ids (two cars and a small one, or road only) and the targets the
    pipeline derives from them."""
    frames = len(config.data.frame_ids)
    ids = np.full((SIZE, SIZE), 0, np.int32)  # road (train id 0)
    ids[:20] = 10  # sky
    if things:
        ids[24:44, 4:28], ids[26:50, 30:58] = 13001, 13002  # cars (train id 13)
        ids[22:24, 60:63] = 13003  # 6 px: a small car
    per_frame = np.stack([np.roll(ids, f, axis=1) for f in range(frames)])
    batch = random_batch(config, 2, seed=seed)
    batch["panoptic"] = np.broadcast_to(per_frame, (2,) + per_frame.shape).copy()
    targets = instances.match_instances(per_frame, SLOTS, config.piecewise.min_area_fraction)
    targets["small_object_mask"] = instances.small_object_mask(
        per_frame, config.masking.min_area_fraction)
    for key, value in targets.items():
        batch[key] = np.broadcast_to(value, (2,) + value.shape).copy()
    return batch


def _run(recipe, config, batches, extra=None):
    """Jitted steps (SGD) from numpy-filled variables: (states, metrics, traces)."""
    networks = recipe.build_networks(config)
    shapes = jax.eval_shape(
        functools.partial(recipe.init_variables, networks, config), jax.random.PRNGKey(0))
    params, batch_stats = fill_like(shapes)
    if extra is None:
        extra = recipes.init_extra(recipe, config)
    state = TrainState.create(params, batch_stats, optax.sgd(1e-3), extra)
    dp = parallel_lib.DataParallel(
        functools.partial(recipe.train_step, networks=networks, config=config),
        mode="jit", devices=jax.local_devices()[:1])
    state = dp.put_state(state)
    states, metrics = [dp.get_state(state)], []
    for batch in batches:
        state, m = dp.step(state, dp.put_batch(batch), jax.random.PRNGKey(1))
        metrics.append(dp.metrics_to_host(m))
        states.append(dp.get_state(state))
    return states, metrics, dp.num_traces


def _changed(a, b) -> bool:
    return any(np.any(np.asarray(x) != np.asarray(y)) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


_PLUGIN_KEYS = ("piecewise/instances", "piecewise/dropped_fraction", "size/", "contact/",
                "issl", "panoptic", "contrastive")


def _assert_all_plugins_ran(metrics):
    for m in metrics:
        assert all(np.isfinite(v) for v in m.values()), m
        for key in _PLUGIN_KEYS:
            assert any(k.startswith(key) for k in m), (key, sorted(m))
    assert metrics[0]["piecewise/instances"] == 2.0  # two cars kept, the small one dropped
    assert metrics[0]["issl"] > 0 and metrics[0]["panoptic"] > 0


def test_every_plugin_in_the_monodepth2_step():
    config = _tiny_plugins(load_config("monodepth2"))
    batches = [_labelled_batch(config, seed=i) for i in range(2)]
    states, metrics, traces = _run(recipes.get("monodepth2"), config, batches)
    assert traces == 1
    _assert_all_plugins_ran(metrics)
    for net in ("depth", "pose", "panoptic"):
        assert _changed(states[0].params[net], states[1].params[net]), net


def test_every_plugin_in_the_student_step_with_distillation(tmp_path):
    teacher = load_config("manydepth_demo")
    teacher.data.height = teacher.data.width = SIZE
    checkpoint.save_config(str(tmp_path), teacher)
    tree = recipes.abstract_state_tree(teacher)
    model = {**tree, **fill_like({k: tree[k] for k in ("params", "batch_stats")}),
             "extra": {"min_depth_bin": np.float32(1.5), "max_depth_bin": np.float32(30.0)}}
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(1, model, {"step": np.int64(1)}, {})
    ckpt.close()
    config = _tiny_plugins(load_config("hrdepth_plus_demo"))
    config.model.depth_arch = "resnet"  # the same step; a ResNet keeps the compile short
    config.distill.teacher_workdir = str(tmp_path)
    config.distill.depth_gradient = True  # no scale head on a ResNet: dense depth distillation
    batches = [_labelled_batch(config, seed=i) for i in range(2)]
    states, metrics, traces = _run(student, config, batches)
    assert traces == 1
    _assert_all_plugins_ran(metrics)
    assert all(m["distill"] > 0 for m in metrics)


def test_every_plugin_in_the_manydepth_step_across_the_freeze():
    config = _tiny_plugins(load_config("manydepth"))
    config.model.num_depth_bins = 8
    config.manydepth.freeze_teacher_step = 1
    batches = [_labelled_batch(config, seed=i) for i in range(3)]
    states, metrics, traces = _run(manydepth, config, batches)
    assert traces == 1
    _assert_all_plugins_ran(metrics)
    assert [m["teacher/frozen"] for m in metrics] == [0.0, 1.0, 1.0]
    # Before the freeze the teacher-side plug-ins (ISSL on the mono net) are in the total; after
    # it they are logged only, as the teacher's own loss.
    frozen = metrics[1]
    assert frozen["loss"] == pytest.approx(
        frozen["multi/loss"] + frozen["panoptic"] + frozen["contrastive"], rel=1e-5)
    joint = metrics[0]
    assert joint["loss"] == pytest.approx(
        joint["teacher/loss"] + joint["multi/loss"] + joint["panoptic"] + joint["contrastive"]
        + joint["issl"], rel=1e-5)
    for net in ("depth", "mono", "pose", "panoptic"):
        assert _changed(states[0].params[net], states[1].params[net]), net
    for net in ("mono", "pose"):
        assert not _changed(states[1].params[net], states[3].params[net]), net


def test_manydepth_piecewise_without_things_is_the_plain_step():
    """No thing pixel: unmasked ego pairs, no valid instance, no pixel dropped. The instance calls
    still run (static shapes) but must change no number, in either phase."""
    plain = load_config("manydepth")
    for config in (plain,):
        config.data.height = config.data.width = SIZE
        config.train.batch_size = 2
        config.train.steps_per_epoch = 10
        config.model.num_depth_bins = 8
        config.manydepth.freeze_teacher_step = 1
    piecewise = plain.copy_and_resolve_references()
    piecewise.data.load_panoptic = True
    piecewise.piecewise.enabled = True
    piecewise.piecewise.max_instances = SLOTS
    batches = [_labelled_batch(piecewise, seed=i, things=False) for i in range(2)]
    base_states, base_metrics, _ = _run(manydepth, plain, [
        {k: v for k, v in b.items() if k in random_batch(plain, 2)} for b in batches])
    states, metrics, _ = _run(manydepth, piecewise, batches)
    for m0, m1 in zip(base_metrics, metrics):
        for key in ("loss", "teacher/loss", "multi/loss", "grad_norm"):
            assert m1[key] == pytest.approx(m0[key], rel=2e-5, abs=1e-7), key
    for a, b in zip(jax.tree_util.tree_leaves(base_states[-1].params),
                    jax.tree_util.tree_leaves(states[-1].params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert jnp.asarray(metrics[0]["piecewise/instances"]) == 0.0
