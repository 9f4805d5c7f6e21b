"""The experiment runners' bookkeeping (tools/run_testbeds.py, tools/run_plugin_protocol.py,
tools/make_start.py): budgets, the table statistics, the verdict on a paper's claim, the RESULTS.md
blocks and the start weights. The runs themselves are experiments, not tests."""

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest
from conftest import load_config
from flax import traverse_util

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


testbeds = _tool("run_testbeds")
plugins = _tool("run_plugin_protocol")
make_start = _tool("make_start")


def _metrics(scale, baseline=None):
    row = {k: (1.0 - scale * 0.1 if k in ("a1", "a2", "a3") else scale) for k in KEYS}
    if baseline is not None:
        row["baseline_mean_depth"] = baseline
    return row


@pytest.mark.parametrize("testbed,budget,epochs,decay", [
    ("synthetic", "short", 6, 5), ("synthetic", "long", 24, 20),
    ("real", "short", 20, 17), ("real", "long", 80, 67)])
def test_budgets_drop_the_lr_for_the_last_sixth(testbed, budget, epochs, decay, monkeypatch):
    monkeypatch.setattr(testbeds, "synthetic_root", lambda: "/syn")
    args = testbeds.testbed_overrides(testbed, budget, "/raw", "/splits")
    assert f"--config.train.num_epochs={epochs}" in args
    assert f"--config.optim.decay_epochs=({decay},)" in args
    root = "/syn" if testbed == "synthetic" else "/raw"
    assert f"--config.data.root={root}" in args


def test_real_testbed_without_a_prepared_drive_is_refused():
    with pytest.raises(SystemExit, match="--real_root"):
        testbeds.testbed_overrides("real", "short", None, None)


def test_summary_is_mean_sample_std_and_seeds_beating_the_baseline_on_all_seven():
    baseline = _metrics(0.30)
    # Seed 0 beats the baseline everywhere; seed 1 is worse on every metric.
    results = [_metrics(0.20, baseline), _metrics(0.40, baseline)]
    stat = testbeds.summarize(results)
    assert stat["n"] == 2
    assert stat["abs_rel"]["mean"] == pytest.approx(0.30)
    assert stat["abs_rel"]["std"] == pytest.approx(np.sqrt(2 * 0.1 ** 2))  # ddof=1 of 0.2, 0.4
    assert stat["a1"]["values"] == pytest.approx([0.98, 0.96])
    assert stat["beats_baseline_all_7"] == 1
    assert stat["baseline"]["rmse"] == pytest.approx(0.30)


def test_results_block_is_replaced_in_place_and_the_rest_kept(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nintro\n\n## Other section\nkept\n")
    table = {"short": {"real": {"demo": testbeds.summarize([_metrics(0.2, _metrics(0.3))])}}}
    block = testbeds.markdown(table, testbeds.ENTRIES, ("short", "long"), ("synthetic", "real"))
    testbeds.write_results(str(path), block)
    testbeds.write_results(str(path), block)  # twice: still one block
    text = path.read_text()
    assert text.count(testbeds.BEGIN) == 1 and text.count(testbeds.END) == 1
    assert "## Other section\nkept" in text and text.startswith("# Results")
    assert "### real, short budget" in text
    assert "| `demo` |" in text and "| 1/1 |" in text
    assert "| baseline | the average training depth map | - | 0.300 |" in text


def test_every_testbed_entry_names_a_config_that_exists():
    for entry in testbeds.ENTRIES:
        if entry.config != "released":
            assert (REPO / "configs" / f"{entry.config}.py").exists(), entry
    for variant in plugins.VARIANTS:
        assert (REPO / "configs" / f"{variant.config}.py").exists(), variant
        assert variant.control is None or variant.control in {v.name for v in plugins.VARIANTS}


@pytest.mark.parametrize("differences,expected", [
    ([-0.03, -0.02, -0.04], "yes"),          # mean -0.03, standard error 0.0058
    ([0.03, 0.02, 0.04], "no"),
    ([-0.03, 0.02, 0.005], "within noise"),  # mean -0.0017, standard error 0.0145
    ([-0.1], "n/a (one seed)"),
])
def test_verdict_needs_twice_the_standard_error(differences, expected):
    assert plugins.verdict(differences) == expected


def test_plugin_table_pairs_each_seed_with_its_control(tmp_path):
    seeds = [0, 1, 2]
    results = {
        "control": {0: {"abs_rel": 0.30, "moving": 0.50}, 1: {"abs_rel": 0.20, "moving": 0.40},
                    2: {"abs_rel": 0.25, "moving": 0.45}},
        # Worse than the seed-averaged control on seed 1, better than its own seed on every one.
        "piecewise": {0: {"abs_rel": 0.29, "moving": 0.45}, 1: {"abs_rel": 0.19, "moving": 0.35},
                      2: {"abs_rel": 0.24, "moving": 0.40}},
    }
    text = plugins.table(results, seeds)
    rows = [line for line in text.splitlines() if line.startswith("| `piecewise`")]
    assert len(rows) == 2  # AbsRel and the moving-car region it targets
    assert "| abs_rel | 0.240 ± 0.050 | 0.250 | -0.010 ± 0.000 | yes |" in rows[0]
    assert "| moving | 0.400 ± 0.050 | 0.450 | -0.050 ± 0.000 | yes |" in rows[1]
    control_row = next(line for line in text.splitlines() if line.startswith("| `control`"))
    assert "(control)" in control_row


def test_only_selection_refuses_unknown_names_in_both_runners():
    errors = []
    assert [v.name for v in testbeds.select(plugins.VARIANTS, "issl,control", errors.append)] \
        == ["control", "issl"]
    assert errors == []
    testbeds.select(plugins.VARIANTS, "issl,isl", errors.append)
    assert errors and "isl" in errors[0]
    with pytest.raises(SystemExit):
        plugins.main(["--start", "nowhere", "--only", "no_such_plugin"])


def _finished_run(config_name: str, value: float) -> dict:
    """A stand-in for a finished run of `config_name`: every variable filled with `value`."""
    shapes = make_start.target_shapes(load_config(config_name))
    return jax.tree_util.tree_map(lambda s: np.full(s.shape, value, s.dtype), shapes)


def test_start_takes_every_variable_with_the_same_path_and_shape(monkeypatch):
    run = _finished_run("demo", 7.0)
    monkeypatch.setattr(make_start, "run_variables", lambda workdir: run)
    target = load_config("manydepth_demo")
    takes = [make_start.Take.parse(t) for t in
             ("mono=/runs/demo:depth", "pose=/runs/demo:pose", "depth=/runs/demo:depth")]
    params, stats, coverage = make_start.build(target, takes)
    # ManyDepth's single-frame teacher and pose net are Monodepth2's: all of them.
    assert coverage["mono"][0] == coverage["mono"][1] and coverage["pose"][0] == coverage["pose"][1]
    # Its multi-frame net: everything but the layers the cost volume changes.
    covered, total = coverage["depth"]
    assert 0 < covered < total
    shapes = make_start.target_shapes(target)
    for collection, tree in (("params", params), ("batch_stats", stats)):
        flat = traverse_util.flatten_dict(tree["depth"])
        expected = traverse_util.flatten_dict(shapes[collection]["depth"])
        assert set(flat) <= set(expected)
        assert all(v.shape == expected[k].shape and np.all(v == 7.0) for k, v in flat.items())
    assert len(traverse_util.flatten_dict(params["depth"])) == covered
    assert ("encoder", "layer1_0", "conv1", "kernel") in traverse_util.flatten_dict(params["depth"])


def test_start_refuses_unknown_networks_and_takes_that_cover_nothing(monkeypatch):
    demo = load_config("demo")
    monkeypatch.setattr(make_start, "run_variables", lambda workdir: _finished_run("demo", 1.0))
    with pytest.raises(ValueError, match="has no network 'panoptic'"):
        make_start.build(demo, [make_start.Take("panoptic", "/runs/demo", "depth")])
    with pytest.raises(ValueError, match="the run has no network 'mono'"):
        make_start.build(demo, [make_start.Take("depth", "/runs/demo", "mono")])
    monkeypatch.setattr(make_start, "run_variables",
                        lambda workdir: {"params": {"depth": {"head": np.zeros(3)}},
                                         "batch_stats": {}})
    with pytest.raises(ValueError, match="nothing to start from"):
        make_start.build(demo, [make_start.Take("depth", "/runs/other", "depth")])
    with pytest.raises(ValueError, match="NET=WORKDIR:SOURCE_NET"):
        make_start.Take.parse("depth=/runs/demo")
