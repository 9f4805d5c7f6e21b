"""Multi-process training (README "Multi-host training"): a run of 2 processes over loopback gives
the numbers of a 1-process run with the same global batch, and its checkpoints resume on either
process count.

Fast (default suite): where the process layout comes from; each process's rows of the grain
pipeline; a tiny model trained by 2 processes against 1, with resume 2 -> 1 and 1 -> 2
(tests/multiprocess_worker.py). Slow: the same through `jdepth.train` on Monodepth2 (the README's
local command, run as written plus tiny-run overrides), and JAX's SLURM detection under an emulated
`srun` step.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, load_config

from jdepth.data import pipeline
from jdepth.training import config_check, distributed

WORKER = REPO / "tests" / "multiprocess_worker.py"
LAUNCH = REPO / "tools" / "launch_local.py"


def _env(**extra) -> dict:
    """A child's environment: one CPU device per process, no inherited process layout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JDEPTH_", "SLURM_", "JAX_COORDINATOR"))}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.update(extra)
    return env


def _run(command: list[str], timeout: float, env: dict | None = None) -> str:
    result = subprocess.run(command, cwd=REPO, env=env or _env(), capture_output=True, text=True,
                            check=False, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


# ----------------------------------------------------------------------------- process layout


def test_layout_from_config_environment_slurm_or_none():
    none = {"num_processes": 0, "process_id": -1, "coordinator_address": "",
            "local_device_ids": "", "auto_detect": True}
    assert distributed.resolve(none, {}) is None
    assert distributed.resolve(None, {}) is None  # a config without the section
    env = {"JDEPTH_NUM_PROCESSES": "2", "JDEPTH_PROCESS_ID": "1",
           "JDEPTH_COORDINATOR_ADDRESS": "10.0.0.1:1234"}
    assert distributed.resolve(none, env) == distributed.Layout(
        "10.0.0.1:1234", 2, 1, None, "environment")
    assert distributed.resolve(none, {**env, "JDEPTH_NUM_PROCESSES": "1"}) is None
    # The config wins over the environment; JAX's own address variable fills a missing address.
    cfg = {**none, "num_processes": 4, "process_id": 3, "local_device_ids": "2,3"}
    assert distributed.resolve(cfg, {**env, "JAX_COORDINATOR_ADDRESS": "h:9"}) == \
        distributed.Layout("h:9", 4, 3, (2, 3), "config")
    # An srun step of several tasks: JAX's detection fills everything in.
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "8",
             "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}
    assert distributed.resolve(none, slurm) == distributed.Layout(None, None, None, None, "slurm")
    assert distributed.resolve({**none, "local_device_ids": "0,1,2,3"}, slurm).local_device_ids \
        == (0, 1, 2, 3)
    assert distributed.resolve({**none, "auto_detect": False}, slurm) is None
    assert distributed.resolve(none, {**slurm, "SLURM_NTASKS": "1"}) is None
    sbatch_shell = {k: v for k, v in slurm.items() if k != "SLURM_STEP_NODELIST"}
    assert distributed.resolve(none, sbatch_shell) is None
    # The environment's layout wins over SLURM's (tools/launch_local.py inside an allocation).
    assert distributed.resolve(none, {**slurm, **env}).source == "environment"


def test_incomplete_layout_names_what_is_missing():
    with pytest.raises(ValueError) as info:
        distributed.resolve({"num_processes": 2, "process_id": -1, "coordinator_address": ""}, {})
    message = str(info.value)
    assert "2 processes (from the config)" in message
    assert "config.distributed.process_id or $JDEPTH_PROCESS_ID" in message
    assert "config.distributed.coordinator_address" in message


def test_train_cli_refuses_an_incomplete_layout_before_starting_jax(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jdepth.train", "--config", "configs/demo.py", "--workdir",
         str(tmp_path / "w"), "--config.distributed.num_processes=2",
         "--config.distributed.coordinator_address=127.0.0.1:1"],
        cwd=REPO, env=_env(JDEPTH_ALLOCATOR="system"), capture_output=True, text=True,
        check=False, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "error: a run of 2 processes (from the config) needs the process id "
        "(config.distributed.process_id or $JDEPTH_PROCESS_ID)")


def test_several_processes_need_jit_and_a_batch_that_divides_over_them():
    config = load_config("demo")  # pmap, batch 8
    problems = {p.where: p.what for p in config_check.value_problems(config, 4, 4)}
    assert "must be 'jit' in a run of 4 processes" in problems["config.train.parallel"]
    config.train.parallel = "jit"
    config.train.batch_size = 6
    problems = {p.where: p.what for p in config_check.value_problems(config, 3, 4)}
    assert problems["config.train.batch_size"] == "6 does not divide over the 4 processes"
    config.train.batch_size = 8
    assert config_check.value_problems(config, 4, 4) == []
    # Resuming on another layout is not a config change.
    assert {"distributed.num_processes", "distributed.process_id"} <= config_check.FREE_KEYS


# --------------------------------------------------------------------- the pipeline's shards


def test_process_shards_are_the_rows_of_the_one_process_batches(synthetic_root):
    cfg = pipeline.PipelineConfig(root=synthetic_root, height=64, width=96)
    split = os.path.join(synthetic_root, "splits", "train_files.txt")
    make = lambda i, n: pipeline.make_dataset(
        cfg, split, batch_size=4, seed=3, train=True, shard_index=i, shard_count=n)
    full, shards = make(0, 1), [make(0, 2), make(1, 2)]
    n_split = pipeline.split_length(split)
    # Steps 0-1 and the first ones of the second epoch (a new permutation).
    for step in (0, 1, n_split // 4, n_split // 4 + 1):
        whole = full[step]
        parts = [s[step] for s in shards]
        assert all(len(p["index"]) == 2 for p in parts)
        for key in whole:  # images, intrinsics and the augmentation draws: same rows, same values
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    # Iterator positions count global steps on any process count: a 1-process state restores
    # into a shard's iterator at the same step.
    it_full = pipeline.make_iterator(full)
    for _ in range(3):
        next(it_full)
    it_shard = pipeline.make_iterator(shards[1])
    it_shard.set_state(it_full.get_state())
    np.testing.assert_array_equal(next(it_shard)["index"], full[3]["index"][2:])
    with pytest.raises(ValueError, match="global batch size 4 does not divide over 3 processes"):
        make(0, 3)


# ------------------------------------------------------------------- tools/launch_local.py


def test_launcher_gives_each_process_its_role_and_stops_all_when_one_fails():
    code = ("import os, sys, time\n"
            "role = [os.environ[k] for k in ('JDEPTH_PROCESS_ID', 'JDEPTH_NUM_PROCESSES',\n"
            "        'JDEPTH_COORDINATOR_ADDRESS')]\n"
            "print('role', *role, flush=True)\n"
            "if role[0] == '1' and sys.argv[1:2] == ['fail']: sys.exit(3)\n"
            "time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)\n")
    launch = [sys.executable, str(LAUNCH), "--num_processes", "2"]
    output = _run(launch + ["--", sys.executable, "-c", code], timeout=60)
    roles = sorted(line.split()[-3:] for line in output.splitlines() if "role" in line)
    assert [r[:2] for r in roles] == [["0", "2"], ["1", "2"]]
    assert roles[0][2] == roles[1][2] and roles[0][2].startswith("127.0.0.1:")
    assert any(line.startswith("[1] role 1") for line in output.splitlines())
    # Process 1 fails while process 0 would run for a minute: status 3 at once, 0 stopped.
    result = subprocess.run(launch + ["--", sys.executable, "-c", code, "fail", "60"], cwd=REPO,
                            env=_env(), capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 3
    # Nobody fails but nobody finishes: the launcher's timeout stops both.
    result = subprocess.run(launch + ["--timeout", "2", "--", sys.executable, "-c", code, "-",
                                      "60"], cwd=REPO, env=_env(), capture_output=True, text=True,
                            check=False, timeout=30)
    assert result.returncode == 124 and "timeout after 2 s" in result.stderr


# ------------------------------------------------------- a tiny model on 2 processes against 1


def _worker(workdir, steps: int, out, processes: int) -> dict:
    """tests/multiprocess_worker.py as `processes` processes of 1 CPU device each, or, for 1, in
    this pytest process, whose 2 CPU devices (tests/conftest.py) give the 2-process mesh."""
    args = ["--workdir", str(workdir), "--steps", str(steps), "--out", str(out)]
    if processes == 1:
        import multiprocess_worker

        assert multiprocess_worker.main(args) == 0
    else:
        _run([sys.executable, str(LAUNCH), "--num_processes", str(processes), "--timeout", "150",
              "--", sys.executable, str(WORKER)] + args, timeout=180)
    with open(out) as f:
        return json.load(f)


def _close(a: dict, b: dict) -> None:
    """The same program split the same 2 ways: equal but for float32 rounding (observed: equal to
    the bit; bound 1e-6, about ten float32 ulps of these O(1) values). Against 1 device the
    8-row means are summed in another order, which moved the last bits (observed <= 9.4e-8)."""
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-6)
    for key in a["params"]:
        np.testing.assert_allclose(a["params"][key], b["params"][key], rtol=0, atol=1e-6)
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=0, atol=1e-6)


def test_two_processes_match_one_and_checkpoints_resume_on_either_count(tmp_path):
    # 2 processes for steps 1-2, then 1 process resumes for 3-4; and the other way round.
    two_then_one = [_worker(tmp_path / "a", 2, tmp_path / "a2.json", processes=2),
                    _worker(tmp_path / "a", 4, tmp_path / "a4.json", processes=1)]
    one_then_two = [_worker(tmp_path / "b", 2, tmp_path / "b2.json", processes=1),
                    _worker(tmp_path / "b", 4, tmp_path / "b4.json", processes=2)]
    assert [r["process_count"] for r in two_then_one] == [2, 1]
    assert [r["device_count"] for r in one_then_two] == [2, 2]
    assert [r["start"] for r in two_then_one + one_then_two] == [0, 2, 0, 2]
    assert all(r["num_traces"] == 1 for r in two_then_one + one_then_two)
    _close(two_then_one[0], one_then_two[0])  # steps 1-2: 2 processes == 1 process
    _close(two_then_one[1], one_then_two[1])  # steps 3-4 resumed across counts, both ways
    assert two_then_one[1]["data_state"] == one_then_two[1]["data_state"] == {"next_index": 4}
    # Written once: only process 0's array files (orbax's ocdbt.process_<i>) in either workdir.
    for run in ("a", "b"):
        written = {p.name for p in (tmp_path / run / "checkpoints").glob("*/*/ocdbt.process_*")}
        assert written == {"ocdbt.process_0"}


# --------------------------------------------------------------- slow: SLURM and jdepth.train


@pytest.mark.slow
def test_an_emulated_srun_step_initialises_through_jax_slurm_detection(tmp_path):
    """Two tasks with the variables `srun` sets (first node: localhost); JAX derives the
    coordinator from SLURM_STEP_NODELIST and the port from $JAX_COORDINATOR_PORT."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in range(2):
        env = _env(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                   SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), JAX_COORDINATOR_PORT=port)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), "--workdir", str(tmp_path / "w"), "--steps", "2",
             "--out", str(tmp_path / "out.json")], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [proc.communicate(timeout=150)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs), outputs[0][-3000:] + outputs[1][-3000:]
    with open(tmp_path / "out.json") as f:
        assert json.load(f)["process_count"] == 2


def _readme_local_command() -> tuple[dict, list[str]]:
    """The README's local 2-process command: (environment assignments, argv)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Multi-host training", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"# this machine, 2 processes.*\n((?:.*\\\n)*.*\n)", section)
    assert match, "README 'Multi-host training' lost its local 2-process command"
    words = shlex.split(match.group(1).replace("\\\n", " "))
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


# A tiny run of the demo recipe (ResNet-18 depth and pose nets at 64x96, global batch 4).
_TINY = ["--config.train.batch_size=4", "--config.data.height=64", "--config.data.width=96",
         "--config.train.max_steps=4", "--config.train.log_every=1",
         "--config.train.ckpt_every_steps=2", "--config.train.eval_every_epochs=0",
         "--config.train.progress_bar=False"]


def _train_command(argv: list[str], workdir, root) -> list[str]:
    """`argv` with python -> this interpreter, its --workdir replaced, and the tiny overrides."""
    argv = [sys.executable if w == "python" else w for w in argv]
    i = argv.index("--workdir")
    argv[i + 1] = str(workdir)
    return argv + [f"--config.data.root={root}"] + _TINY


def _metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def _final_params(workdir, step: int = 4) -> dict:
    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "model")
    restored = ocp.StandardCheckpointer().restore(path)
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(restored["params"])}


@pytest.fixture(scope="module")
def cli_runs(synthetic_root, tmp_path_factory):
    """jdepth.train on the demo recipe: the README's 2-process command (one CPU device each), the
    same command as 1 process with 2 devices, and each resumed from the other's step-2 checkpoint
    on the other process count.

    The 1-process reference has the 2-process run's mesh (2 devices): the same program, split the
    same way, so the processes and the cross-process collectives are all that differs. Against 1
    device, Adam turns the float reassociation of the sharded means into parameter differences
    of up to 2 x lr x steps on near-zero gradients (BENCHMARKS.md, "Multi-process training";
    tests/test_parallel.py checks the device split itself with SGD).
    """
    tmp = tmp_path_factory.mktemp("cli")
    env_extra, readme_argv = _readme_local_command()
    assert readme_argv[:2] == ["python", "tools/launch_local.py"]
    launch_at = readme_argv.index("--")
    one_argv = readme_argv[launch_at + 1:]
    # Both process counts compile their own program once; the resumed runs reuse it from disk.
    cache = _env(JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **env_extra)
    timeout = 900

    def one(workdir):
        two_devices = {**cache, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        return _run(_train_command(one_argv, workdir, synthetic_root), timeout, two_devices)

    def two(workdir):
        launcher = [sys.executable if w == "python" else w for w in readme_argv[:launch_at]]
        return _run(launcher + ["--timeout", str(timeout - 60), "--"]
                    + _train_command(one_argv, workdir, synthetic_root), timeout, cache)

    runs = {"one": tmp / "one", "two": tmp / "two"}
    logs = {"one": one(runs["one"]), "two": two(runs["two"])}
    for name, source, resume in (("two_then_one", "two", one), ("one_then_two", "one", two)):
        workdir = tmp / name
        shutil.copytree(runs[source], workdir)
        shutil.rmtree(workdir / "checkpoints" / "4")  # resume from step 2
        runs[name] = workdir
        logs[name] = resume(workdir)
    return runs, logs


@pytest.mark.slow
def test_readme_two_process_command_gives_the_one_process_numbers(cli_runs):
    runs, logs = cli_runs
    assert "process 0 of 2 (environment): 1 local of 2 devices" in logs["two"]
    one, two = _metrics(runs["one"]), _metrics(runs["two"])
    # Logged once: one record per step, from process 0.
    assert [m["step"] for m in one] == [m["step"] for m in two] == [1, 2, 3, 4]
    assert logs["two"].count("Test split") == 1
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in two], [m[key] for m in one], rtol=RTOL[key])
    a, b = _final_params(runs["one"]), _final_params(runs["two"])
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert diff < PARAM_ATOL, diff
    assert not list(runs["two"].glob("checkpoints/*/*/ocdbt.process_1"))


@pytest.mark.slow
def test_cli_checkpoints_resume_on_the_other_process_count(cli_runs):
    runs, logs = cli_runs
    assert "Resuming" in logs["two_then_one"] and "Resuming" in logs["one_then_two"]
    reference = _metrics(runs["one"])
    ref_params = _final_params(runs["one"])
    for name in ("two_then_one", "one_then_two"):
        resumed = _metrics(runs[name])
        assert [m["step"] for m in resumed] == [1, 2, 3, 4]  # steps 3-4 replaced, not appended
        np.testing.assert_allclose([m["loss"] for m in resumed], [m["loss"] for m in reference],
                                   rtol=RTOL["loss"])
        params = _final_params(runs[name])
        diff = max(float(np.max(np.abs(params[k] - ref_params[k]))) for k in params)
        assert diff < PARAM_ATOL, (name, diff)


# Tolerances of the Monodepth2 runs against the 1-process, 2-device reference: observed 0 (the
# runs are bitwise equal; BENCHMARKS.md, "Multi-process training"). Both run one program split
# the same 2 ways, and an all-reduce over 2 operands is exact whichever side adds, so the bound
# only allows for float32 rounding (1e-6, about 10 ulps); more means the processes computed
# something else (other rows, another state, another program).
RTOL = {"loss": 1e-6, "grad_norm": 1e-6}
PARAM_ATOL = 1e-6
