"""The one plug-in protocol (jdepth/training/plugins.py), small-object masking and the layering."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdepth.data import instances, panoptic_labels
from jdepth.training import plugins

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jdepth"

# data -> geometry -> losses -> models -> training: a module may import its own layer and below.
_LAYERS = {"data": 0, "geometry": 1, "cost_volume": 1, "matching": 1, "losses": 2, "models": 3,
           "training": 4}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "jdepth" or len(parts) < 2:
        return None
    return _LAYERS.get(parts[1])


def _imports(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            if node.module == "jdepth":  # `from jdepth import geometry`
                names += [f"jdepth.{alias.name}" for alias in node.names]
    return names


def test_layers_import_only_their_own_layer_and_below():
    files = [p for p in ROOT.rglob("*.py")]
    violations = []
    checked = 0
    for path in files:
        rel = path.relative_to(ROOT.parent).with_suffix("")
        own = _layer(".".join(rel.parts))
        if own is None:
            continue
        checked += 1
        for name in _imports(path):
            other = _layer(name)
            if other is not None and other > own:
                violations.append(f"{rel}: imports {name}")
    assert checked > 60  # the walk found the package
    assert violations == []


def _panoptic(ids):
    return np.asarray(ids, np.int32)


def test_small_object_mask_drops_small_instances_and_crowd_only():
    h, w = 10, 10
    ids = np.full((h, w), 7, np.int32)  # road (stuff)
    big = 13 * panoptic_labels.LABEL_DIVISOR + 1  # car, 12 px
    small = 13 * panoptic_labels.LABEL_DIVISOR + 2  # car, 4 px
    ids[0:3, 0:4] = big
    ids[5:7, 5:7] = small
    ids[9, 0:3] = 11  # person crowd region: thing class without an instance number
    mask = instances.small_object_mask(_panoptic(ids), min_area_fraction=0.05)  # 5 px
    expected = np.zeros((h, w), bool)
    expected[5:7, 5:7] = True
    expected[9, 0:3] = True
    np.testing.assert_array_equal(mask, expected)
    # Unlike piece-wise pose's dropped_mask, instances beyond the slots are kept: with M = 1 the
    # second large car would be dropped there, but not here.
    ids[5:8, 5:9] = small  # now 12 px as well
    mask = instances.small_object_mask(_panoptic(ids[None]), min_area_fraction=0.05)
    dropped = instances.match_instances(_panoptic(ids[None]), 1, 0.05)["dropped_mask"]
    assert not mask[5:8, 5:9].any() and dropped[5:8, 5:9].all()


def _plugin(name, **kw):
    return plugins.Plugin(name=name, **kw)


def test_pixel_weights_multiply_and_frozen_masks_unite():
    a = jnp.full((1, 2, 2, 1), 0.5)
    b = jnp.asarray([[[[1.0], [0.0]], [[1.0], [1.0]]]])
    src = plugins.PoseSource({}, {}, None, {}, pixel_weights=jnp.full((1, 2, 2, 1), 2.0))
    ps = [_plugin("a", pixel_weights=lambda batch: a), _plugin("b", pixel_weights=lambda batch: b)]
    np.testing.assert_allclose(plugins.pixel_weights(ps, {}, src.pixel_weights), 2.0 * 0.5 * b)
    assert plugins.pixel_weights([_plugin("none")], {}) is None
    m1 = jnp.asarray([[[[True], [False]], [[False], [False]]]])
    m2 = jnp.asarray([[[[False], [False]], [[False], [True]]]])
    fm = [_plugin("1", depth_frozen_mask=lambda batch: m1),
          _plugin("2", depth_frozen_mask=lambda batch: None),
          _plugin("3", depth_frozen_mask=lambda batch: m2)]
    np.testing.assert_array_equal(plugins.depth_frozen_mask(fm, {}), m1 | m2)


def test_extra_losses_sum_gate_and_key_each_plugin():
    seen = {}

    def loss(value, name):
        def fn(params, batch_stats, inputs, outputs, rng):
            seen[name] = (jax.random.key_data(rng), outputs["tag"])
            return jnp.float32(value), {f"{name}/v": value}
        return fn

    ps = [_plugin("a", loss=loss(1.0, "a")), _plugin("w"),
          _plugin("b", loss=loss(2.0, "b"), reads="single_frame")]
    outputs = {"depth": {"tag": "multi"}, "single_frame": {"tag": "mono"}}
    rng = jax.random.key(3)
    total, aux = plugins.extra_losses(ps, {}, {}, {}, outputs, rng)
    assert float(total) == 3.0 and aux == {"a/v": 1.0, "b/v": 2.0}
    assert seen["a"][1] == "multi" and seen["b"][1] == "mono"
    np.testing.assert_array_equal(seen["a"][0], jax.random.key_data(jax.random.fold_in(rng, 1)))
    np.testing.assert_array_equal(seen["b"][0], jax.random.key_data(jax.random.fold_in(rng, 3)))
    total, _ = plugins.extra_losses(ps, {}, {}, {}, outputs, rng,
                                    gates={"single_frame": jnp.float32(0.0)})
    assert float(total) == 1.0


def test_one_pose_source_at_most():
    def src(*a, **k):
        return None

    assert plugins.pose_source([_plugin("x")]) is None
    one = _plugin("p", poses=src)
    assert plugins.pose_source([one, _plugin("x")]) is one
    with pytest.raises(ValueError, match="more than one pose source"):
        plugins.pose_source([one, _plugin("q", poses=src)])


def _config(name):
    from jdepth.config_files import sibling

    return sibling(str(ROOT.parent / "configs" / "x.py"), name).get_config()


@pytest.mark.parametrize("name", ["manydepth_plus", "hrdepth_plus", "hrdepth_pp",
                                  "manydepth_plus_demo", "hrdepth_plus_demo", "hrdepth_pp_demo"])
def test_paper_recipes_switch_every_component_on(name):
    config = _config(name)
    assert config.panoptic.enabled and config.contrastive.enabled
    assert config.piecewise.enabled and config.masking.small_objects
    assert config.data.load_panoptic
    assert config.piecewise.instance_pose == "absolute"  # the paper's reading (item 7)
    if name.startswith("manydepth"):
        assert config.model.msff


def test_build_lists_the_configured_plugins_in_order():
    config = _config("hrdepth_plus_demo")
    config.issl.enabled = True
    config.train.steps_per_epoch = 10
    from jdepth.training import student

    networks = student.build_networks(config)
    names = [p.name for p in plugins.build(config, networks, jnp.int32(0), "monodepth")]
    assert names == ["piecewise", "small_objects", "issl", "panoptic"]
    settings = plugins.pipeline_settings(config)
    assert settings["small_object_area"] == config.masking.min_area_fraction
    assert settings["max_instances"] == config.piecewise.max_instances
    with pytest.raises(ValueError, match="family"):
        plugins.build(config, networks, jnp.int32(0), "other")
