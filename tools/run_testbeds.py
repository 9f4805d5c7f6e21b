"""Each recipe's main entry on both testbeds (synthetic set, real KITTI drive), several seeds.

  python tools/run_testbeds.py --real_root /data/kitti_raw --real_splits /data/splits_0013 \
      [--runs runs/testbeds] [--only demo,demo_norm,released] [--seeds 0,1,2] [--budget short|long] \
      [--testbeds synthetic,real] [--results RESULTS.md]

Testbeds:
  synthetic  the embedded default (configs/demo.py's generated set: 6 training drives, 192x64);
  real       a real KITTI raw drive prepared with tools/prepare_kitti_drive.py (e.g.
             2011_09_26_drive_0013_sync, README "Real-data testbed"), trained at 192x64, batch 8.
Budgets (same for every entry of a testbed; the LR drops x0.1 for the last sixth of the steps):
  short  the issue-23 protocol: synthetic 6 epochs (258 steps), real 20 epochs (260 steps);
  long   4x: synthetic 24 epochs (1032 steps), real 80 epochs (1040 steps).
Entries: jdepth configs with overrides, and `released` (the released PyTorch Monodepth2 trained by
tools/train_released.py on the same pipeline). A finished run is not trained again; a killed one
resumes (jdepth) or restarts (released). Each run's test metrics sit in its workdir; the table
(mean and spread over seeds of the 7 Eigen metrics, next to the average-depth baseline, and how
many seeds beat the baseline on all 7) goes into RESULTS.md between the markers
`<!-- testbeds:begin -->` and `<!-- testbeds:end -->`, and every number into RESULTS_testbeds.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
HIGHER_IS_BETTER = ("a1", "a2", "a3")
BEGIN, END = "<!-- testbeds:begin -->", "<!-- testbeds:end -->"


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    config: str  # configs/<config>.py, or "released" (tools/train_released.py)
    what: str
    overrides: tuple[str, ...] = ()
    testbeds: tuple[str, ...] = ("synthetic", "real")


ENTRIES = (
    Entry("released", "released", "released PyTorch Monodepth2 (paper settings: lr 1e-4, no aids)",
          ("--config.data.height=64", "--config.data.width=192", "--config.train.batch_size=8")),
    Entry("monodepth2", "monodepth2", "jdepth configs/monodepth2.py (paper settings, no aids)",
          ("--config.data.height=64", "--config.data.width=192", "--config.train.batch_size=8")),
    Entry("demo", "demo", "configs/demo.py (the README's demo command)"),
    Entry("demo_norm", "demo", "configs/demo.py with pose lr x1, 26 warm-up steps and depth "
          "normalisation (the collapse study's candidate)",
          ("--config.optim.pose_lr_scale=1.0", "--config.optim.warmup_steps=26",
           "--config.loss.depth_normalization=True")),
)


def testbed_overrides(testbed: str, budget: str, real_root: str | None,
                      real_splits: str | None) -> list[str]:
    epochs = {("synthetic", "short"): 6, ("synthetic", "long"): 24,
              ("real", "short"): 20, ("real", "long"): 80}[(testbed, budget)]
    decay = epochs - max(1, epochs // 6)
    common = [f"--config.train.num_epochs={epochs}", f"--config.optim.decay_epochs=({decay},)",
              "--config.train.progress_bar=False", "--config.train.log_every=5"]
    if testbed == "synthetic":
        root = synthetic_root()
        splits = os.path.join(root, "splits")
        return common + [f"--config.data.root={root}", f"--config.data.split_dir={splits}",
                         f"--config.data.test_split={os.path.join(splits, 'test_files.txt')}",
                         "--config.data.num_workers=0"]
    if not real_root or not real_splits:
        raise SystemExit("the real testbed needs --real_root and --real_splits "
                         "(tools/prepare_kitti_drive.py)")
    return common + [f"--config.data.root={real_root}", f"--config.data.split_dir={real_splits}",
                     f"--config.data.test_split={os.path.join(real_splits, 'test_files.txt')}",
                     "--config.data.num_workers=1"]


def synthetic_root() -> str:
    """configs/demo.py's generated synthetic set (generated on first use), for every entry."""
    sys.path.insert(0, REPO)
    from jdepth.config_files import sibling
    from jdepth.training.datasets import ensure_synthetic

    return ensure_synthetic(sibling(os.path.join(REPO, "configs", "x.py"), "demo").get_config())


def run(entry: Entry, testbed: str, budget: str, seed: int, runs: str, args) -> dict | None:
    workdir = os.path.join(runs, budget, testbed, entry.name, f"seed{seed}")
    final = os.path.join(workdir, "eval", "train_final_test_metrics.json")
    if not os.path.exists(final):
        if args.no_train:
            return None
        overrides = testbed_overrides(testbed, budget, args.real_root, args.real_splits)
        overrides += [*entry.overrides, f"--config.seed={seed}"]
        if entry.config == "released":
            cmd = [sys.executable, os.path.join(REPO, "tools", "train_released.py"),
                   "--config", os.path.join(REPO, "configs", "monodepth2.py")]
            # The released trainer reads the config's data and schedule; its synthetic set is
            # the one configs/demo.py generates.
        else:
            cmd = [sys.executable, "-m", "jdepth.train",
                   "--config", os.path.join(REPO, "configs", f"{entry.config}.py")]
        cmd += ["--workdir", workdir, *overrides]
        os.makedirs(workdir, exist_ok=True)
        print(f"[testbeds] {budget}/{testbed}/{entry.name}/seed{seed}", flush=True)
        start = time.time()
        with open(os.path.join(workdir, "train.log"), "a") as log:
            proc = subprocess.run(cmd, check=False, cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{workdir}: training failed, see {workdir}/train.log")
        with open(os.path.join(workdir, "eval", "wall_seconds.json"), "w") as f:
            json.dump({"seconds": time.time() - start}, f)
    with open(final) as f:
        return json.load(f)


def summarize(results: list[dict]) -> dict:
    """Mean, std and per-seed values of the 7 metrics; seeds beating the baseline on all 7."""
    out = {"n": len(results)}
    for k in KEYS:
        values = np.array([r[k] for r in results])
        out[k] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1
                  else 0.0, "values": values.tolist()}
    base = results[0].get("baseline_mean_depth", {})
    out["baseline"] = {k: base[k] for k in KEYS if k in base}
    out["beats_baseline_all_7"] = sum(
        all((r[k] > base[k]) if k in HIGHER_IS_BETTER else (r[k] < base[k]) for k in KEYS)
        for r in results) if out["baseline"] else None
    return out


def _cell(stat: dict, key: str) -> str:
    s = stat[key]
    return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if stat["n"] > 1 else "")


def _beats(stat: dict) -> str:
    # Runs from before the velodyne baseline was stored carry none: nothing to count against.
    beats = stat["beats_baseline_all_7"]
    return "-" if beats is None else f"{beats}/{stat['n']}"


def markdown(table: dict, entries, budgets, testbeds) -> str:
    lines = [BEGIN, "", "## Both testbeds: each recipe's main entry, several seeds", "",
             ("Written by `python tools/run_testbeds.py` (do not edit by hand). Test split, Eigen "
             "protocol, median-scaled, mean ± std over seeds (sample std). `beats` = seeds that "
             "beat the average-depth baseline on all 7 metrics. Budgets: `short` = synthetic 258 "
             "steps / real 260 steps, `long` = 4x; batch 8 at 192x64, the LR x0.1 for the last "
             "sixth of the steps."), ""]
    for budget in budgets:
        for testbed in testbeds:
            rows = [(e, table.get(budget, {}).get(testbed, {}).get(e.name)) for e in entries]
            rows = [(e, s) for e, s in rows if s]
            if not rows:
                continue
            lines += [f"### {testbed}, {budget} budget", "",
                      "| entry | what | seeds | " + " | ".join(KEYS) + " | beats |",
                      "|---|---|---|" + "---|" * len(KEYS) + "---|"]
            for e, s in rows:
                lines.append(f"| `{e.name}` | {e.what} | {s['n']} | "
                             + " | ".join(_cell(s, k) for k in KEYS)
                             + f" | {_beats(s)} |")
            base = rows[0][1]["baseline"]
            if base:
                lines.append("| baseline | the average training depth map | - | "
                             + " | ".join(f"{base[k]:.3f}" for k in KEYS) + " | - |")
            lines.append("")
    lines.append(END)
    return "\n".join(lines)


def write_results(path: str, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Puts `block` (which starts with `begin` and ends with `end`) into the page at `path`:
    in place of the marked block it already holds, else after the page's first paragraph."""
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        head, sep, rest = text.partition("\n\n")
        text = head + sep + block + "\n\n" + rest if sep else block + "\n" + text
    with open(path, "w") as f:
        f.write(text)


def select(items, only: str | None, error) -> list:
    """The items (with a `name`) that `only` ("a,b") names, all without it; an unknown name is an
    error (`error(message)`, e.g. argparse's `parser.error`), not silently skipped."""
    if not only:
        return list(items)
    names = only.split(",")
    unknown = sorted(set(names) - {item.name for item in items})
    if unknown:
        error(f"unknown entries {unknown}; known: {[item.name for item in items]}")
    return [item for item in items if item.name in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", default=os.path.join(REPO, "runs", "testbeds"))
    parser.add_argument("--real_root")
    parser.add_argument("--real_splits")
    parser.add_argument("--only", default=None)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", default="short", help="short, long or short,long")
    parser.add_argument("--testbeds", default="synthetic,real")
    parser.add_argument("--results", default=os.path.join(REPO, "RESULTS.md"))
    parser.add_argument("--no_train", action="store_true",
                        help="only tabulate the runs that finished")
    args = parser.parse_args(argv)
    entries = select(ENTRIES, args.only, parser.error)
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = args.budget.split(",")
    testbeds = args.testbeds.split(",")
    for b in budgets:
        if b not in ("short", "long"):
            parser.error(f"--budget {b!r}: short or long")
    for t in testbeds:
        if t not in ("synthetic", "real"):
            parser.error(f"--testbeds {t!r}: synthetic or real")
    json_path = os.path.splitext(args.results)[0] + "_testbeds.json"
    table = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            table = json.load(f)
    for budget in budgets:
        for testbed in testbeds:
            for entry in entries:
                if testbed not in entry.testbeds:
                    continue
                results = [r for r in (run(entry, testbed, budget, s, args.runs, args)
                                       for s in seeds) if r is not None]
                if results:
                    table.setdefault(budget, {}).setdefault(testbed, {})[entry.name] = (
                        summarize(results))
                    with open(json_path, "w") as f:
                        json.dump(table, f, indent=1)
    write_results(args.results, markdown(table, ENTRIES, ("short", "long"),
                                         ("synthetic", "real")))
    print(f"[testbeds] wrote {args.results} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
