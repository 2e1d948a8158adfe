"""Process-group helpers that also work in a single process without ``torchrun``.

Who starts the process group: entry points only. ``fae.cli.main`` wraps every verb in
:func:`process_group`; a Python user running a library function under ``torchrun`` does the same
(``with fae.distributed.process_group(): train(stage)``). Library code never starts or stops it: it
asks :func:`device` for this rank's device and uses the rank helpers, which are no-ops for rank 0
of 1 when no group exists. Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the group
is NCCL when CUDA is available, gloo on CPU; multi-node runs work through torchrun's rendezvous.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block, restored after. Many tiny,
    latency-bound kernels (small eigen-solves, a probe's L-BFGS) gain nothing from threads, and on a
    busy machine spinning threads made them up to 30x slower (measured on 2 shared cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def _launched() -> bool:
    """True when started by torchrun (or any launcher that sets the env:// variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def device() -> torch.device:
    """This rank's device (``cuda:LOCAL_RANK`` made current, else CPU); starts nothing."""
    dev = default_device()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def init_distributed(timeout_s: float = 1800.0) -> torch.device:
    """Join the process group if launched by torchrun (idempotent); return this rank's device.
    Entry points only (see the module docstring)."""
    device_ = device()
    if _launched() and not is_initialized():
        backend = "nccl" if device_.type == "cuda" else "gloo"
        kwargs = {"device_id": device_} if device_.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return device_


def destroy_distributed() -> None:
    if is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(timeout_s: float = 1800.0) -> Iterator[torch.device]:
    """Join the process group for the block (when launched by torchrun) and leave it afterwards,
    unless it was already running; yields this rank's device."""
    owner = not is_initialized()
    dev = init_distributed(timeout_s)
    try:
        yield dev
    except BaseException:
        if owner:  # the other ranks may never reach a barrier: leave at once
            destroy_distributed()
        raise
    if owner:
        _leave_together()


def _leave_together() -> None:
    """Tear the group down in step: every rank reaches a barrier first (no rank destroys its
    communicators while a peer still talks to them), then objects that still hold the group (a
    finished run's DDP/FSDP wrappers in a reference cycle) are collected while the interpreter is
    whole, not at its shutdown, where a backend's worker threads can abort the process."""
    if is_initialized():
        barrier()
        gc.collect()
        destroy_distributed()


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        dist.barrier()


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's (or rank ``rank_`` of ``world``'s) contiguous slice of ``n`` items; the slices
    are in rank order, disjoint, and cover ``n``. The first ``n % world`` ranks get one extra item,
    so sizes differ by at most one. Sampling, evaluation and caching all shard with this."""
    size = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    if size < 1 or not 0 <= r < size:
        raise ValueError(f"invalid rank {r} of world size {size}")
    base, extra = divmod(n, size)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order (dim-0 sizes may differ).

    With :func:`shard_range` shards this restores the original item order.
    """
    if world_size() == 1:
        return t
    t = t.contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``t`` (dim 0) in rank order, on the CPU; ``t`` itself in a single process.

    The one gather of evaluation results (features, logits, labels): the collective runs on this
    rank's default device (NCCL moves CUDA tensors only), and with :func:`shard_range` shards the
    rows come back in the original item order.
    """
    if world_size() == 1:
        return t
    return all_gather_tensor(t.to(default_device())).cpu()


def all_reduce_sums(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Sums over ranks of float64 accumulators (counts, sums, sums of products), on the CPU.

    The one all-reduce of streamed statistics: the tensors travel packed in one flat buffer (one
    collective, whatever their number and shapes) and come back with their shapes. A single process
    gets them back unchanged.
    """
    if world_size() == 1:
        return list(tensors)
    packed = torch.cat([t.reshape(-1) for t in tensors]).to(default_device())
    packed = all_reduce_sum(packed).cpu()
    sizes = [t.numel() for t in tensors]
    return [part.reshape(t.shape) for part, t in zip(packed.split(sizes), tensors)]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` is left untouched)."""
    t = t.clone()
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(t) / world_size()


def all_gather_object(obj: object) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` as held by rank ``src``, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(action: Callable[[], T], catch: type[Exception], raise_as: type[Exception]) -> T:
    """``action()`` on rank 0 only, its value on every rank; when it raises ``catch``, every rank
    raises ``raise_as`` with the same message (so no rank waits at a collective the others left)."""
    value, message = None, None
    if is_main():
        try:
            value = action()
        except catch as e:
            message = str(e)
    value, message = broadcast_object((value, message))
    if message is not None:
        raise raise_as(message)
    return value


def check_replicas_equal(tensors: list[torch.Tensor]) -> bool:
    """True when every rank holds bit-identical ``tensors`` (compares a byte digest per rank)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return len(set(all_gather_object(digest.hexdigest()))) == 1
