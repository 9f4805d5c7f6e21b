"""tools/run_synthetic_suite.py: its entries exist and its report holds the numbers it was given."""

import importlib.util
import json
import sys

from conftest import REPO, load_config


def _suite():
    spec = importlib.util.spec_from_file_location("suite",
                                                  REPO / "tools" / "run_synthetic_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["suite"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_every_entry_is_a_demo_sized_config_with_the_same_budget():
    suite = _suite()
    budgets = set()
    for entry in suite.SUITE:
        config = load_config(entry.config)
        budgets.add((config.data.height, config.data.width, config.train.batch_size,
                     config.train.num_epochs, config.seed, tuple(sorted(config.data.synthetic))))
    assert len(budgets) == 1, budgets


def test_every_override_names_a_field_of_its_config():
    suite = _suite()
    for entry in suite.SUITE:
        config = load_config(entry.config)
        for override in entry.overrides:
            path = override.removeprefix("--config.").split("=")[0].split(".")
            node = config
            for key in path:
                assert key in node, f"{entry.name}: {override} ({key} not in its config)"
                node = node[key]


def test_student_entry_distils_the_suite_manydepth_run():
    suite = _suite()
    entries = {e.name: e for e in suite.SUITE}
    student = entries["hrdepth_pp"]
    assert load_config(student.config).recipe == "student"
    assert student.overrides[0] == "--config.distill.teacher_workdir={runs}/manydepth"
    assert list(entries).index("manydepth") < list(entries).index("hrdepth_pp")  # teacher first


def test_results_page_tables(tmp_path):
    suite = _suite()
    entries = [suite.Entry("a", "demo", "first"), suite.Entry("b", "demo_issl", "second"),
               suite.Entry("c", "demo", "ablation: third", ablation=True)]
    metrics = dict(abs_rel=0.25, sq_rel=2.0, rmse=9.0, rmse_log=0.4, a1=0.6, a2=0.8, a3=0.9)

    def run(abs_rel, moving, absolute=False, pq=None):
        ev = {"regions": {"all": {**metrics, "abs_rel": abs_rel}, "moving": {"abs_rel": moving},
                          "edge_band": {"abs_rel": 0.4}}, "panoptic": pq}
        if absolute:
            ev["regions_absolute"] = {"all": {**metrics, "scale_ratio_median": 1.02,
                                              "scale_ratio_std": 0.05}}
            ev["scale"] = {"gamma_mean": 12.5, "gamma_std": 0.25}
        return {"train": {**metrics, "abs_rel": abs_rel, "wall_seconds": 600.0,
                          "baseline_mean_depth": {**metrics, "abs_rel": 0.357}}, "eval": ev}

    results = {"a": run(0.286, 0.372), "b": run(0.270, 0.301, absolute=True,
                                                pq=dict(pq=41.5, sq=70.0, rq=55.0, pq_things=20.0,
                                                        pq_stuff=50.0)),
               "c": run(0.300, 0.350)}
    baseline = {"all": {"abs_rel": 0.347}, "moving": {"abs_rel": 0.577},
                "edge_band": {"abs_rel": 0.446}}
    results["a"]["eval"]["cost_volume"] = {
        "fraction_within_0.1": 0.095, "abs_rel": 1.266, "confident_fraction": 0.6875,
        "exact_geometry": {"median_shift_of_0.1_depth_error_matching_px": 0.0586,
                           "fraction_shift_at_least_half_a_matching_px": 0.0}}
    path = tmp_path / "RESULTS.md"
    suite.write_results(entries, results, baseline, str(path), str(tmp_path / "fig.png"))
    text = path.read_text()
    assert "| `a` | first | 0.286 |" in text
    assert "| `b` | second (**absolute depth**, no median scaling) | 0.270 |" in text
    assert "| baseline | the average training depth map, every image | 0.357 |" in text
    assert "| `c` | ablation: third | 0.300 |" in text  # ablations are in the tables
    assert "then `a`, `b` (disparity" in text  # but not in the figure
    assert "Training all 3 runs took 0.5 h of wall time in total" in text
    assert "| `a` | 0.286 | 0.372 | 0.400 |" in text
    assert "| baseline | 0.347 | 0.577 | 0.446 |" in text
    # Absolute table: absolute abs_rel and a1, the median-scaled abs_rel, the scale ratio, gamma.
    assert "| `b` | 0.250 | 0.600 | 0.270 | 1.020 | 0.050 | 12.500 | 0.250 |" in text
    assert "| `b` | 41.5 | 70.0 | 55.0 | 20.0 | 50.0 |" in text
    assert "![suite](fig.png)" in text
    assert "| `a` | 0.095 | 1.266 | 0.688 | 0.059 | 0.000 |" in text  # cost volume table
    assert "recorded numbers" not in text
    suite.write_results(entries, results, baseline, str(path), None, recorded=("a", "c"))
    assert "2 of the 3 rows are recorded numbers of earlier runs" in path.read_text()


def test_evaluation_is_computed_once_per_finished_run(tmp_path, monkeypatch):
    import os

    suite = _suite()
    eval_dir = tmp_path / "a" / "eval"
    eval_dir.mkdir(parents=True)
    final = eval_dir / "train_final_test_metrics.json"
    final.write_text("{}")
    calls = []
    all_regions = {k: {"abs_rel": 0.3} for k in suite.REGIONS}
    monkeypatch.setattr(suite, "_evaluate", lambda workdir: calls.append(workdir) or {
        "n": len(calls), "regions": all_regions})
    entry = suite.Entry("a", "demo", "first")
    assert suite.evaluate(entry, str(tmp_path))["n"] == 1
    assert suite.evaluate(entry, str(tmp_path))["n"] == 1  # read back, not recomputed
    assert len(calls) == 1
    cache = eval_dir / "suite_eval.json"
    os.utime(final, (os.path.getmtime(cache) + 10,) * 2)  # the run was trained again
    assert suite.evaluate(entry, str(tmp_path))["n"] == 2
    # A cache from before a region was added: only the regions are computed again.
    old = {"n": 2, "regions": {"all": {"abs_rel": 0.3}}, "panoptic": {"pq": 30.0}}
    cache.write_text(json.dumps(old))
    os.utime(final, (1, 1))  # trained long before either cache
    region_calls = []
    monkeypatch.setattr(suite, "_evaluate_regions", lambda workdir: region_calls.append(
        workdir) or {"regions": all_regions})
    out = suite.evaluate(entry, str(tmp_path))
    assert out == {"n": 2, "regions": all_regions, "panoptic": {"pq": 30.0}}
    assert len(calls) == 2 and len(region_calls) == 1
    assert suite.evaluate(entry, str(tmp_path)) == out and len(region_calls) == 1


def test_recorded_numbers_stand_in_for_missing_run_folders(tmp_path, monkeypatch):
    """--recorded: a fresh checkout (no runs/) rewrites RESULTS.md from the recorded JSON for the
    entries it does not train again, and trains and evaluates the others."""
    suite = _suite()
    names = ("monodepth2", "monodepth2_seed1")
    regions = {k: {"abs_rel": 0.3} for k in suite.REGIONS}
    recorded = {"results": {n: {"train": {"abs_rel": 0.1 * i}, "eval": {"regions": regions}}
                            for i, n in enumerate(names)},
                "baseline_regions": {"all": {"abs_rel": 0.35}}}
    (tmp_path / "recorded.json").write_text(json.dumps(recorded))
    (tmp_path / "runs" / "monodepth2_seed1").mkdir(parents=True)  # this one was trained again
    trained = []
    monkeypatch.setattr(suite, "train", lambda entry, runs, log: trained.append(entry.name) or {
        "abs_rel": 0.9})
    monkeypatch.setattr(suite, "evaluate", lambda entry, runs: {"regions": regions, "new": 1})
    monkeypatch.setattr(suite, "baseline_regions", lambda entry, runs: {"from": entry.name})
    written = {}
    monkeypatch.setattr(suite, "write_results", lambda entries, results, baseline, path, fig,
                        recorded: written.update(results=results, baseline=baseline, figure=fig,
                                                 recorded=recorded))
    assert suite.main(["--runs", str(tmp_path / "runs"), "--only", ",".join(names),
                       "--results", str(tmp_path / "R.md"),
                       "--recorded", str(tmp_path / "recorded.json")]) == 0
    assert trained == ["monodepth2_seed1"]
    assert written["results"]["monodepth2"] == recorded["results"]["monodepth2"]
    assert written["results"]["monodepth2_seed1"] == {"train": {"abs_rel": 0.9},
                                                      "eval": {"regions": regions, "new": 1}}
    assert written["baseline"] == {"from": "monodepth2_seed1"}
    assert written["figure"].endswith("synthetic_suite.png")  # linked, not redrawn
    assert written["recorded"] == ("monodepth2",)
    saved = json.loads((tmp_path / "R.json").read_text())
    assert saved["results"]["monodepth2"] == recorded["results"]["monodepth2"]


def test_started_entries_start_from_earlier_entries_runs():
    """A fine-tuned entry's start weights come from suite runs trained before it, parseable as
    tools/make_start.py takes (NET=WORKDIR:SOURCE)."""
    suite = _suite()
    order = [e.name for e in suite.SUITE]
    started = [e for e in suite.SUITE if e.start]
    assert {e.name for e in started} >= {"manydepth_plus", "hrdepth_plus_full", "hrdepth_pp_full"}
    for entry in started:
        for take in entry.start:
            net, rest = take.split("=")
            workdir, source = rest.rsplit(":", 1)
            assert workdir.startswith("{runs}/") and net and source, take
            assert order.index(workdir.removeprefix("{runs}/")) < order.index(entry.name), take


def test_page_rewrite_keeps_other_tools_and_hand_written_blocks():
    suite = _suite()
    old = ("# Results\n\n<!-- testbeds:begin -->\n## Both testbeds\nT\n<!-- testbeds:end -->\n\n"
           "Written by the suite.\n\n## Test split\n| old table |\n\n"
           "<!-- plugins:begin -->\nP\n<!-- plugins:end -->\n\nloose old text\n\n"
           "<!-- by-hand:begin (hand-written) -->\nH\n<!-- by-hand:end -->\n")
    new = "# Results\n\nWritten by the suite.\n\n## Test split\n| new table |\n"
    page = suite.with_kept_blocks(new, old)
    assert page.startswith("# Results\n\n<!-- testbeds:begin -->\n## Both testbeds\nT\n"
                           "<!-- testbeds:end -->\n\nWritten by the suite.")
    assert "| new table |" in page and "| old table |" not in page
    assert page.index("| new table |") < page.index("<!-- plugins:begin -->") \
        < page.index("<!-- by-hand:begin (hand-written) -->\nH\n<!-- by-hand:end -->")
    assert "loose old text" not in page
    assert suite.with_kept_blocks(new, page) == page  # a second rewrite changes nothing
