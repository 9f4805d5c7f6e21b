"""Input-pipeline throughput: the file-tree source vs the packed tfds source, per worker count.

Example:
  python tools/benchmark_input.py --data_root /tmp/synth640 \
      --split_file /tmp/synth640/splits/train_files.txt --tfds_dir /tmp/synth640_tfds \
      --height 192 --width 640 --batch_size 12 --workers 0,1,2 --json /tmp/input.json

Each row builds the training dataset (shuffle, random flip and jitter draws, batching: what the
training loop consumes), starts an iterator with `num_workers` grain processes (0: threads in this
process), pulls `--warmup` batches (worker start-up, caches) and then times `--batches` batches.
The consumer does nothing, so the prefetch buffers stay near empty and samples/s is the production
rate. On a shared machine that rate moves with other processes' load; the CPU time per sample of
the map work (single thread, `time.process_time`) is printed too and hardly does.
The tfds split is packed first if `--tfds_dir` does not hold it yet (the time is reported).

Grain workers are spawned processes that re-import this module, so it only defines flags and
functions at import time; absl parses the flags before any worker starts (`app.run`).
"""

from __future__ import annotations

import json
import os
import platform
import time

from absl import app, flags

from jdepth.data import pipeline, tfds_kitti

SOURCES = ("files", "tfds")

_DATA_ROOT = flags.DEFINE_string("data_root", None, "KITTI raw root (real or synthetic).")
_SPLIT_FILE = flags.DEFINE_string("split_file", None, "Split file to read.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", None, "tfds data dir; packed here if needed.")
_SPLIT_NAME = flags.DEFINE_string("split_name", "bench", "tfds split name of the packed copy.")
_HEIGHT = flags.DEFINE_integer("height", 192, "Training height.")
_WIDTH = flags.DEFINE_integer("width", 640, "Training width.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 12, "Samples per batch.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Batches pulled before timing.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to measure.")
_SOURCES = flags.DEFINE_list("sources", list(SOURCES), "Sources to measure: files, tfds.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Fresh iterators per row; the median is reported.")
_SEED = flags.DEFINE_integer("seed", 0, "Shuffle / augmentation seed.")
_JSON = flags.DEFINE_string("json", None, "Write the results table here as JSON.")

flags.mark_flags_as_required(["data_root", "split_file"])


def time_iterator(ds, num_workers: int, batch_size: int, warmup: int, batches: int) -> dict:
    """Times one iterator over `ds`: start-up (first `warmup` batches) and steady throughput."""
    start = time.perf_counter()
    iterator = pipeline.make_iterator(ds, num_workers=num_workers)
    for _ in range(warmup):
        next(iterator)
    timed_from = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - timed_from
    del iterator  # stops the worker processes before the next row starts its own
    return {
        "num_workers": num_workers,
        "startup_s": round(timed_from - start, 3),
        "ms_per_batch": round(1000 * elapsed / batches, 2),
        "samples_per_s": round(batches * batch_size / elapsed, 2),
    }


def cpu_ms_per_sample(ds, batch_size: int, batches: int) -> float:
    """CPU time per sample of the map work alone, in this process and thread.

    Unlike wall-clock throughput this hardly moves with other processes' load on a shared machine,
    so it is the number to compare sources by there.
    """
    ds[0]  # opens files, fills caches
    start = time.process_time()
    for i in range(1, batches + 1):
        ds[i]
    return round(1000 * (time.process_time() - start) / (batches * batch_size), 2)


def measure(ds, num_workers: int, batch_size: int, warmup: int, batches: int,
            repeats: int) -> dict:
    """`time_iterator` `repeats` times (noisy shared machines); the run of median throughput."""
    runs = [time_iterator(ds, num_workers, batch_size, warmup, batches) for _ in range(repeats)]
    runs.sort(key=lambda r: r["samples_per_s"])
    return {**runs[len(runs) // 2], "samples_per_s_runs": [r["samples_per_s"] for r in runs]}


def _dataset(source: str, cfg: pipeline.PipelineConfig):
    common = dict(batch_size=_BATCH_SIZE.value, seed=_SEED.value, train=True)
    if source == "files":
        return pipeline.make_dataset(cfg, _SPLIT_FILE.value, **common)
    return tfds_kitti.make_tfds_dataset(cfg, _TFDS_DIR.value, _SPLIT_NAME.value, **common)


def _format_table(rows: list[dict]) -> str:
    lines = [f"{'source':<8}{'workers':>8}{'samples/s':>12}{'ms/batch':>11}{'startup s':>11}"]
    for r in rows:
        lines.append(f"{r['source']:<8}{r['num_workers']:>8}{r['samples_per_s']:>12.1f}"
                     f"{r['ms_per_batch']:>11.1f}{r['startup_s']:>11.2f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sources = [s.strip() for s in _SOURCES.value]
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise app.UsageError(f"--sources: unknown {unknown}; choose from {SOURCES}")
    if "tfds" in sources and not _TFDS_DIR.value:
        raise app.UsageError("--tfds_dir is required to measure the tfds source")
    workers = [int(w) for w in _WORKERS.value]
    cfg = pipeline.PipelineConfig(root=_DATA_ROOT.value, height=_HEIGHT.value, width=_WIDTH.value)

    prepare_s = None
    if "tfds" in sources:
        start = time.perf_counter()
        tfds_kitti.prepare(_DATA_ROOT.value, _SPLIT_FILE.value, _TFDS_DIR.value, _SPLIT_NAME.value,
                           cfg.frame_ids, cfg.on_missing)
        prepare_s = round(time.perf_counter() - start, 2)

    cpu_ms = {source: cpu_ms_per_sample(_dataset(source, cfg), _BATCH_SIZE.value, _BATCHES.value)
              for source in sources}
    rows = []
    # Sources alternate within a worker count so that load drifting on a shared machine hits both.
    for num_workers in workers:
        for source in sources:
            row = measure(_dataset(source, cfg), num_workers, _BATCH_SIZE.value,
                          _WARMUP.value, _BATCHES.value, _REPEATS.value)
            rows.append({"source": source, **row})
            print(f"  {source} workers={num_workers}: {row['samples_per_s']:.1f} samples/s",
                  flush=True)

    load = os.getloadavg()[0]
    print(f"{_HEIGHT.value}x{_WIDTH.value}, batch {_BATCH_SIZE.value}, {_BATCHES.value} batches "
          f"after {_WARMUP.value} warm-up, median of {_REPEATS.value}, {os.cpu_count()} CPUs, "
          f"load average {load:.1f}"
          + (f"; tfds packing (or reuse) took {prepare_s} s" if prepare_s is not None else ""))
    print(_format_table(sorted(rows, key=lambda r: SOURCES.index(r["source"]))))
    print("CPU ms per sample (single thread, in process): "
          + ", ".join(f"{source} {ms:.1f}" for source, ms in cpu_ms.items()))
    if _JSON.value:
        result = {
            "height": _HEIGHT.value, "width": _WIDTH.value, "batch_size": _BATCH_SIZE.value,
            "warmup": _WARMUP.value, "batches": _BATCHES.value, "repeats": _REPEATS.value,
            "cpus": os.cpu_count(), "load_average_1min": round(load, 2),
            "machine": platform.processor() or platform.machine(), "data_root": _DATA_ROOT.value,
            "split_file": _SPLIT_FILE.value, "tfds_prepare_s": prepare_s,
            "cpu_ms_per_sample": cpu_ms, "rows": rows,
        }
        with open(_JSON.value, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
