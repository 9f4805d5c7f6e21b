"""Metric logging: TensorBoard event files (tensorboardX, no TensorFlow) plus JSON lines.

`W/metrics.jsonl` holds one JSON object per line and per logged step, so curves can be read back
without TensorBoard (tools and tests do). Each record is one `write` of a whole line, flushed at
once; a resumed run first drops the records past the step it resumes from (the steps it trains
again), so the file never holds two records of one step. Images go to TensorBoard only.
"""

from __future__ import annotations

import json
import os

import numpy as np


class SummaryWriter:
    """Writes scalars to TensorBoard and to `metrics.jsonl`; images to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        """Opens the logs of `workdir`.

        Args:
          resume_step: the step the run starts from (0 for a fresh run): records of later steps,
            and final test records, are dropped before appending, since the run logs them again.
            None keeps the file as it is.
        """
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        from tensorboardX import SummaryWriter as TBWriter

        path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is not None:
            truncate_metrics(path, resume_step)
        self._tb = TBWriter(logdir=os.path.join(workdir, "tb"))
        self._jsonl = open(path, "a")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        # One write of the whole line: a kill leaves at most one torn last line, which the next
        # resume drops (truncate_metrics).
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


def truncate_metrics(path: str, step: int) -> int:
    """Drops from a metrics.jsonl the records a run resuming at `step` writes again.

    Those are the records of later steps and the final test records (`test/...`, written once at
    the end of a run); a torn last line (a kill mid-write) goes too. The file is rewritten through
    a temporary file and `os.replace`, so a kill here leaves either the old or the new file.

    Returns:
      the number of lines dropped.
    """
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
            keep = row["step"] <= step and not any(k.startswith("test/") for k in row)
        except (ValueError, KeyError, TypeError):
            keep = False  # a torn line
        if keep:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return sum(1 for line in lines if line.strip()) - len(kept)


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
