"""``python tests/kill_cli.py STEP fae-args...``: the fae command line, SIGKILLed by itself when the
training loop is about to run step ``STEP`` (or, for ``cache-latents``, when shard ``STEP`` is
about to be written): a kill at a chosen point, without racing a fast tiny run from outside."""
from __future__ import annotations

import os
import signal
import sys


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_before_step(step: int) -> None:
    from fae.training import engine

    run_step = engine.Trainer._train_step

    def train_step(self, micro_batches):
        if self.step == step:
            _kill()
        return run_step(self, micro_batches)

    engine.Trainer._train_step = train_step


def _kill_before_shard(shard: int) -> None:
    from fae.data import shard_store

    save = shard_store.atomic_save_safetensors
    written = []

    def save_shard(tensors, path, metadata=None):
        if len(written) == shard:
            _kill()
        written.append(path)
        return save(tensors, path, metadata)

    shard_store.atomic_save_safetensors = save_shard


if __name__ == "__main__":
    at, argv = int(sys.argv[1]), sys.argv[2:]
    (_kill_before_shard if argv[0] == "cache-latents" else _kill_before_step)(at)
    from fae.cli import main

    raise SystemExit(main(argv))
