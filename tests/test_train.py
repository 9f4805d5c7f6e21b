"""End-to-end: `python -m jdepth.train` trains, checkpoints, survives SIGKILL and resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO


def _train_cmd(workdir, root, max_steps):
    return [
        sys.executable, "-m", "jdepth.train",
        "--config", str(REPO / "configs" / "demo.py"),
        "--workdir", str(workdir),
        f"--config.data.root={root}",
        "--config.data.height=64", "--config.data.width=96",
        "--config.train.batch_size=2",
        f"--config.train.max_steps={max_steps}",
        "--config.train.ckpt_every_steps=2",
        "--config.train.log_every=1",
        "--config.train.eval_every_epochs=0",
        "--config.train.progress_bar=False",
    ]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_finishes(synthetic_root, tmp_path):
    workdir = tmp_path / "run"
    cmd = _train_cmd(workdir, synthetic_root, max_steps=8)
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    ckpt_dir = workdir / "checkpoints"
    deadline = time.time() + 400
    # Kill as soon as a first checkpoint is committed (orbax renames the tmp folder when done).
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_before = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
    assert steps_before and steps_before[-1] < 8

    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"Resuming {workdir} from step {steps_before[-1]}" in out.stdout
    assert "abs_rel" in out.stdout
    logged = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train_steps = {row["step"] for row in logged if "loss" in row}
    # Every step after the restored checkpoint was trained and logged by the second run.
    assert set(range(steps_before[-1] + 1, 9)) <= train_steps
    # One trace per process: no recompilation after the first step.
    assert all(row["num_traces"] == 1 for row in logged if "num_traces" in row)
    final = json.load(open(workdir / "eval" / "train_final_test_metrics.json"))
    assert 0 < final["abs_rel"] < 1 and final["num_images"] > 0
    assert "baseline_mean_depth" in final
