"""Runs one command as N cooperating processes on this machine (a multi-process jdepth run).

  python tools/launch_local.py --num_processes 2 -- \
      python -m jdepth.train --config configs/demo.py --workdir runs/demo_2proc

Each copy gets JDEPTH_NUM_PROCESSES, JDEPTH_PROCESS_ID and JDEPTH_COORDINATOR_ADDRESS (a free
loopback port), which jdepth/training/distributed.py turns into `jax.distributed.initialize`;
with `--gpus_per_process K`, process p also gets GPUs p*K ... p*K+K-1 (JAX_LOCAL_DEVICE_IDS).
On a CPU each process has one device unless XLA_FLAGS says otherwise; the processes' collectives
then go over loopback TCP (gloo).

Process 0's output is passed through as it is; the others' lines are prefixed with `[p]`. When one
process fails, the others are stopped (their peers would wait for it in a collective until JAX's
heartbeat timeout) and its exit status is returned; `--timeout` stops all of them with status 124.
README, "Multi-host training".
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

TIMEOUT_STATUS = 124


def free_port() -> int:
    """A TCP port that is free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, process_id: int, num_processes: int, address: str,
                gpus_per_process: int = 0) -> dict:
    """The environment of process `process_id` (module docstring)."""
    env = dict(base)
    env.update(JDEPTH_NUM_PROCESSES=str(num_processes), JDEPTH_PROCESS_ID=str(process_id),
               JDEPTH_COORDINATOR_ADDRESS=address)
    if gpus_per_process:
        first = process_id * gpus_per_process
        env["JAX_LOCAL_DEVICE_IDS"] = ",".join(
            str(i) for i in range(first, first + gpus_per_process))
    return env


def _relay(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()


def launch(command: list[str], num_processes: int, *, port: int = 0, gpus_per_process: int = 0,
           timeout: float = 0.0, env: dict | None = None) -> int:
    """Runs `command` as `num_processes` processes; returns the launch's exit status.

    0 when every process exits with 0; else the first failure's status (then the others are
    stopped), or 124 after `timeout` seconds (> 0).
    """
    address = f"127.0.0.1:{port or free_port()}"
    procs, relays = [], []
    for p in range(num_processes):
        proc = subprocess.Popen(
            command, env=process_env(env or os.environ, p, num_processes, address,
                                     gpus_per_process),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        relay = threading.Thread(target=_relay, args=(proc.stdout, f"[{p}] " if p else "",
                                                      sys.stdout), daemon=True)
        relay.start()
        procs.append(proc)
        relays.append(relay)
    deadline = time.monotonic() + timeout if timeout > 0 else None
    status = 0
    try:
        while True:
            codes = [proc.poll() for proc in procs]  # every one (any() would stop at the first)
            if None not in codes:
                break
            failed = [code for code in codes if code not in (None, 0)]
            late = deadline is not None and time.monotonic() > deadline
            if failed or late:
                status = failed[0] if failed else TIMEOUT_STATUS
                if late:
                    print(f"launch_local: timeout after {timeout:.0f} s; stopping every process",
                          file=sys.stderr, flush=True)
                break
            time.sleep(0.2)
    finally:  # also when this launcher is interrupted or terminated: no orphaned processes
        _stop(procs)
    for relay in relays:
        relay.join(timeout=5)
    if status == 0:
        status = next((proc.returncode for proc in procs if proc.returncode), 0)
    return status


def _stop(procs) -> None:
    """Terminates the processes still running (those this launcher started), then kills them."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--gpus_per_process", type=int, default=0,
                        help="GPUs of each process (0: every process sees all, e.g. on a CPU)")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds before every process is stopped (0: none)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the command, after `--`")
    args = parser.parse_args(argv)
    # SIGTERM (a job scheduler, a test's timeout) unwinds through `launch`, which stops the
    # processes it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after `--`)")
    return launch(command, args.num_processes, port=args.port,
                  gpus_per_process=args.gpus_per_process, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
