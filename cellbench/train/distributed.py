"""Data-parallel training across processes started by ``torchrun`` (one process per GPU or CPU worker).

``torchrun --nproc_per_node=N -m cellbench fit ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and ``MASTER_ADDR``/``MASTER_PORT``; the caller (``cellbench fit``) joins the process group
explicitly with :func:`setup_distributed` (NCCL on CUDA, gloo on CPU), hands the returned
:class:`DistInfo` to the normalizer (``bind_distributed``) and so to the trainer, and leaves
with :func:`shutdown`. Nothing joins a process group as a side effect of building a trainer.

Each rank draws its own batches; after every backward pass the gradients of the network being
stepped are averaged over ranks in one flattened all-reduce (what
``DistributedDataParallel`` does, but compatible with the paper's schedule of freezing networks
in turn), and batch-norm running statistics are averaged after every iteration, so all ranks
hold identical weights throughout.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group (the defaults: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    #: the device this rank trains on (``None``: not chosen here; the trainer resolves ``auto``)
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size_from_env() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device: str | torch.device = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op outside torchrun.

    Parameters
    ----------
    device:
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``: the backend is NCCL for CUDA, gloo for CPU.
        Under torchrun ``auto``/``cuda`` mean the local rank's GPU, which becomes the current
        CUDA device.

    Returns
    -------
    DistInfo
        rank, world size, local rank, the rank's device, and whether this call created the
        group (then :func:`shutdown` destroys it). Outside torchrun (``WORLD_SIZE`` unset or 1):
        ``DistInfo()`` (rank 0 of 1, device not chosen).
    """
    world = world_size_from_env()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    text = str(device)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if text == "auto" else torch.device(text)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local % torch.cuda.device_count())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
        log.info("joined process group: rank %d of %d (%s)", rank, world, backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, owns_group=owns,
                    device=dev)


def broadcast_module(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not info.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def average_gradients(params: list[torch.Tensor], info: DistInfo) -> None:
    """Average ``.grad`` over ranks (one all-reduce per dtype)."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= info.world_size
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(synced)


def average_buffers(module: nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (batch-norm running statistics) over ranks."""
    if not info.enabled:
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = _flatten_dense_tensors([b.data for b in bufs])
    dist.all_reduce(flat)
    flat /= info.world_size
    for b, synced in zip(bufs, _unflatten_dense_tensors(flat, [b.data for b in bufs]), strict=True):
        b.data.copy_(synced)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
