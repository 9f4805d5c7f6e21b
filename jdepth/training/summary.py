"""Metric logging: TensorBoard event files (tensorboardX, no TensorFlow) plus JSON lines.

`W/metrics.jsonl` holds one JSON object per logged step, so curves can be read back without
TensorBoard (tools and tests do). Images go to TensorBoard only.
"""

from __future__ import annotations

import json
import os

import numpy as np


class SummaryWriter:
    """Writes scalars to TensorBoard and to `metrics.jsonl`; images to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        from tensorboardX import SummaryWriter as TBWriter

        self._tb = TBWriter(logdir=os.path.join(workdir, "tb"))
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """images: name -> uint8 [H, W, 3]."""
        if not self.enabled:
            return
        for k, img in images.items():
            self._tb.add_image(k, np.asarray(img), step, dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def read_metrics(workdir: str) -> list[dict]:
    """All rows of `W/metrics.jsonl` (the last row wins when a resumed run re-logs a step)."""
    path = os.path.join(workdir, "metrics.jsonl")
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    row = json.loads(line)
                    rows[(row["step"], tuple(sorted(row)))] = row
    return sorted(rows.values(), key=lambda r: r["step"])
