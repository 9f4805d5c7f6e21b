"""Training curves of several runs side by side: loss, translation norm, mean depth, val AbsRel.

  python tools/plot_curves.py --out docs/real_drive_curves.png \
      --run "released PyTorch=runs/real/released" --run "jdepth monodepth2=runs/real/md2" ...

Each run is `label=workdir` with a `metrics.jsonl` (written by `python -m jdepth.train` and by
tools/train_released.py). Missing keys are skipped; log-scale axes for the translation norm and
the mean depth, where a collapse shows as a jump of orders of magnitude.
"""

from __future__ import annotations

import argparse
import json
import os

PANELS = (
    ("loss", "training loss", False),
    ("pose/t_norm", "|t| to frame +1 (model units)", True),
    ("depth/mean", "mean predicted depth (model units)", True),
    ("val/abs_rel", "val AbsRel (median-scaled)", False),
)
# Older released-run logs used these names.
_ALIASES = {"translation_norm": "pose/t_norm", "depth_mean": "depth/mean"}


def read_curves(workdir: str) -> dict[str, tuple[list[int], list[float]]]:
    """key -> (steps, values) from `workdir/metrics.jsonl` (last record wins per step)."""
    records = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            step = int(record.get("step", 0))
            merged = records.setdefault(step, {})
            merged.update({_ALIASES.get(k, k): v for k, v in record.items()})
    curves = {}
    for key, _, _ in PANELS:
        points = [(s, r[key]) for s, r in sorted(records.items())
                  if isinstance(r.get(key), (int, float))]
        if points:
            curves[key] = ([p[0] for p in points], [p[1] for p in points])
    return curves


def plot(runs: list[tuple[str, str]], out: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for label, workdir in runs:
        curves = read_curves(workdir)
        for ax, (key, name, log_scale) in zip(axes, PANELS):
            if key in curves:
                steps, values = curves[key]
                style = "o-" if key.startswith("val/") else "-"
                ax.plot(steps, values, style, label=label, markersize=3, linewidth=1)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            if log_scale:
                ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="label=workdir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.run:
        label, sep, workdir = spec.partition("=")
        if not sep:
            raise SystemExit(f"--run {spec!r}: expected label=workdir")
        runs.append((label, workdir))
    plot(runs, args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
