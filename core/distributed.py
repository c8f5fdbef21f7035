"""Several processes training one LoRA: the process group, and what the processes must agree on.

`accelerate launch` and `torchrun` start N processes with RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT in their environment; `join` forms torch's process group from them
(NCCL on CUDA, gloo on the CPU). Gradients are exchanged by torch's DistributedDataParallel
(``wrap``); what else must be the same on every process (a stop, a loss, the caches) goes
through the few collectives here. A single process gets ``SINGLE``, for which every method is a
no-op, so the training loop reads the same either way.
"""
from __future__ import annotations

import datetime
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from .errors import SettingsError, TrainerError

DEFAULT_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class ProcessGroup:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (a cancel, a failed check)."""
        if not self.active:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.collective_device)
        self._collect(torch.distributed.all_reduce, value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, number: float) -> float:
        """The mean of a number over the processes (a NaN anywhere makes it NaN everywhere)."""
        if not self.active:
            return float(number)
        value = torch.tensor([float(number)], dtype=torch.float64, device=self.collective_device)
        self._collect(torch.distributed.all_reduce, value)
        return float(value.item()) / self.world_size

    def gather(self, part: Any) -> list[Any]:
        """Every process's ``part`` (plain Python objects, CPU tensors), in rank order, on every process."""
        if not self.active:
            return [part]
        parts: list[Any] = [None] * self.world_size
        self._collect(torch.distributed.all_gather_object, parts, part)
        return parts

    def barrier(self) -> None:
        if self.active:
            self._collect(torch.distributed.barrier)

    @property
    def collective_device(self) -> torch.device:
        backend = torch.distributed.get_backend() if self.active else "gloo"
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    @staticmethod
    def _collect(operation, *args, **kwargs) -> None:
        try:
            operation(*args, **kwargs)
        except RuntimeError as error:  # gloo and NCCL raise RuntimeError subclasses when a peer is gone
            raise TrainerError(peer_lost_message(error)) from None

    def no_sync(self, models: list, last_micro: bool):
        """Skip the gradient exchange on all but the last micro-batch of a step (it happens once, at the end)."""
        if not self.active or last_micro:
            return nullcontext()
        from contextlib import ExitStack

        stack = ExitStack()
        for model in models:
            if hasattr(model, "no_sync"):
                stack.enter_context(model.no_sync())
        return stack

    def wrap(self, model: torch.nn.Module, device: torch.device, unused_parameters: bool = False):
        """``model`` inside DistributedDataParallel (its adapters' gradients averaged over the processes)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused_parameters)


SINGLE = ProcessGroup()


def _reason(error: Exception) -> str:
    """The library's own words, without its source location or advice that does not apply here."""
    import re

    first = (str(error).strip().splitlines() or [error.__class__.__name__])[0]
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[.../pair.cc:537] " prefix
    return first.split(". This is")[0][:200]


def peer_lost_message(error: Exception) -> str:
    first = _reason(error)
    return (
        f"Another training process stopped or cannot be reached ({first}); the run ends on every process. "
        "Resume from the last checkpoint once all processes can run."
    )


def is_peer_failure(error: BaseException) -> bool:
    """Whether an error raised inside a collective (DDP's gradient exchange included) means a peer is gone."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    return any(marker in str(error) for marker in ("gloo", "NCCL", "Connection closed", "Connection reset", "Broken pipe", "timed out"))


def launched_processes() -> int:
    """How many processes the launcher started (1 when started on its own)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def join(device_spec: str | None, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> tuple[ProcessGroup, torch.device | None]:
    """Form the process group when a launcher started several processes; returns it and this process's device
    (None: choose as usual). A process group that cannot form ends in one sentence within ``timeout_seconds``."""
    world = launched_processes()
    if world <= 1:
        return SINGLE, None
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _process_device(device_spec, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds), rank=rank, world_size=world)
    except (RuntimeError, ValueError, OSError) as error:
        first = _reason(error)
        raise TrainerError(
            f"The {world} training processes could not form a group at {address} within {timeout_seconds:g} s ({first}); "
            "check the main process's address and port (free, reachable from every machine) and that every process was started."
        ) from None
    return ProcessGroup(world_size=world, rank=rank, local_rank=local_rank), device


def _process_device(device_spec: str | None, local_rank: int) -> torch.device:
    """Each process's own accelerator (cuda:LOCAL_RANK) or the CPU; one named device cannot serve several processes."""
    if device_spec not in (None, "", "auto"):
        spec = torch.device(device_spec)
        if spec.type != "cpu":
            raise SettingsError(
                f"--device {device_spec} names one device, but the launcher started several processes; leave --device out "
                "(each process takes the accelerator of its local rank) or use --device cpu."
            )
        return spec
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise SettingsError(f"Process {local_rank} of this machine has no GPU: {torch.cuda.device_count()} found; start at most that many processes per machine.")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def leave(group: ProcessGroup) -> None:
    if group.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
