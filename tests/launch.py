"""Run a script or ``-m module`` under ``torchrun --standalone --nproc_per_node=N`` for the
multi-rank tests, and never leave ranks behind: the launch gets its own process group, which is
killed as a whole when it times out (a hung rank would otherwise outlive the test and slow every
test after it)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys


def torchrun(*args: str, nproc: int = 2, timeout: float = 300, env: dict | None = None,
             pythonpath: list[str] = (), check: bool = True) -> subprocess.CompletedProcess:
    """Run ``torchrun ... args``; assert it exits 0 (the message carries its output tails) unless
    not ``check`` (a launch whose ranks are meant to die)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *map(str, args)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun timed out after {timeout} s: {out[-3000:]}{err[-3000:]}") from None
    assert proc.returncode == 0 or not check, out[-3000:] + err[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
