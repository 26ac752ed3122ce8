"""Running the loop under ``torchrun``: process group, device per rank, DDP wrapping, reductions.

``torchrun --nproc_per_node=N script.py`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; when
``WORLD_SIZE > 1`` and no process group exists yet, :func:`setup` creates one (NCCL when the device is a
GPU, gloo on CPU) and destroys it again at the end of ``fit``. A process group the caller created is used
as it is and left alone. Without those variables everything here is a no-op on one process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from nnforge.errors import ConfigError

__all__ = ["Distributed", "setup"]

log = logging.getLogger("nnforge.train")


@dataclass
class Distributed:
    """Where this process sits: rank, world size, its device, and whether it created the process group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model wrapped in DistributedDataParallel when there are several processes.

        A module that may leave some of its parameters out of a step's graph (a mixture-of-experts layer whose
        expert received no token on this rank) says so with a true ``ddp_unused_parameters`` attribute; DDP then
        looks for unused parameters every step (``find_unused_parameters``) instead of waiting for their
        gradients forever.
        """
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        unused = any(getattr(m, "ddp_unused_parameters", False) for m in model.modules())
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` over ranks (the tensor itself on one process)."""
        if self.world_size > 1:
            values = values.to(self.device)  # NCCL reduces GPU tensors only
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.cpu()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self, clean: bool = True) -> None:
        """Destroy the process group if :func:`setup` created it.

        After a clean run every rank first meets at a barrier, so none tears the group down while a peer is
        still inside the last collective; after an error there is no barrier, since the other ranks may
        never arrive. Destroying does not stop gloo's worker threads once DDP has wrapped a model (DDP keeps
        the group referenced, torch 2.13); one that releases the last collective's tensors while the
        interpreter is shutting down aborts the process (``terminate called without an active
        exception``), so a torchrun script that must never abort ends with ``os._exit`` once its files are
        written.
        """
        if self.owns_group and dist.is_initialized():
            if clean and self.world_size > 1:
                dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False


def _pick_device(preference: str, local_rank: int, distributed: bool) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {preference!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
        if distributed and device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup(device_preference: str) -> Distributed:
    """This process's place in the run, creating the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        return Distributed(device=_pick_device(device_preference, 0, distributed=False))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device_preference, local_rank, distributed=True)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)  # type: ignore[arg-type]
        owns = True
    rank, world_size = dist.get_rank(), dist.get_world_size()
    log.info("distributed: rank %d of %d on %s (%s)", rank, world_size, device, dist.get_backend())
    return Distributed(rank=rank, world_size=world_size, device=device, owns_group=owns)
