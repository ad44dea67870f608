"""Everything distributed, in one place: the process group torchrun describes, ranks,
collectives with and without gradient, and "rank 0 first / rank 0 only".

Launched by ``torchrun --nproc_per_node N tools/train.py ...`` the processes form one
group (NCCL on GPUs, gloo on the CPU); launched by plain ``python`` there is no group
and every function here is the single-process identity, so callers never branch.
"""

import datetime
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from reid.errors import ReidError
from reid.utils.env import resolve_device

T = TypeVar("T")

# The documented autograd all-gather; its replacement is a private module so far.
warnings.filterwarnings(
    "ignore", "torch.distributed.nn.functional.all_gather is deprecated", FutureWarning
)


def world_size() -> int:
    """Processes in the training (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if world_size() > 1 else 0


def is_main_process() -> bool:
    """True on rank 0, the process that writes the run's files and logs."""
    return rank() == 0


@contextmanager
def process_group(device: str = "auto", timeout_minutes: float = 30.0) -> Iterator[torch.device]:
    """Joins the process group torchrun describes for the duration of the block.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) this process uses
    ``cuda:LOCAL_RANK`` when CUDA is asked for or available, else the CPU. CUDA tensors
    travel over NCCL, CPU tensors (logged scalars, shared results) over gloo.
    Collectives that wait longer than ``timeout_minutes`` (a dead or stuck rank) fail
    instead of hanging. Without torchrun no group is made.

    Args:
        device: ``MODEL.DEVICE``: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        timeout_minutes: the collectives' timeout.

    Yields:
        This process's device.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield resolve_device(device)
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if on_gpu:
        if local_rank >= torch.cuda.device_count():
            raise ReidError(
                f"local rank {local_rank} has no GPU: this machine has "
                f"{torch.cuda.device_count()}; use --nproc_per_node <= that number"
            )
        torch.cuda.set_device(local_rank)
    chosen = resolve_device(f"cuda:{local_rank}" if on_gpu else "cpu")
    dist.init_process_group(
        "cpu:gloo,cuda:nccl" if on_gpu else "gloo",
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    try:
        yield chosen
    finally:
        dist.destroy_process_group()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, then the others run it (generating data, say).

    A ReidError on rank 0 is raised on every rank, so each prints the same line.
    """
    if world_size() == 1:
        yield
        return
    if is_main_process():
        try:
            yield
        except ReidError as err:
            _share_from_main(str(err))
            raise
        except BaseException:
            _share_from_main("rank 0 failed; see its output above")
            raise
        _share_from_main(None)
    else:
        error = _share_from_main(None)
        if error is not None:
            raise ReidError(error)
        yield


def on_main(compute: Callable[[], T]) -> T:
    """``compute()`` run once, on rank 0, and its result given to every rank.

    Whatever it raises on rank 0 ends every rank at once, instead of leaving the others
    waiting at their next collective until the timeout: a ReidError is raised on every
    rank with its message; any other exception is re-raised on rank 0 (its traceback
    printed there) and the other ranks raise a ReidError that names it.
    """
    if world_size() == 1:
        return compute()
    outcome: tuple[str, object] = ("ok", None)
    failure: BaseException | None = None
    if is_main_process():
        try:
            outcome = ("ok", compute())
        except ReidError as err:
            outcome = ("error", str(err))
        except BaseException as err:  # a bug, a KeyboardInterrupt: still tell the others
            failure = err
            outcome = ("error", f"rank 0 failed ({type(err).__name__}: {err}); see its output")
    kind, value = _share_from_main(outcome)
    if failure is not None:
        raise failure
    if kind == "error":
        raise ReidError(value)
    return value


def _share_from_main(value: T) -> T:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks, else as is.

    DDP averages the gradients over ranks after every backward pass; it needs every
    parameter to get a gradient in every step (see :class:`reid.losses.ReidLoss`).
    """
    if world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrites each tensor, in place, with rank 0's (module parameters or buffers)."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates every rank's ``(n, ...)`` tensor in rank order, keeping the gradient.

    Backward sums, on each rank, the gradients that all ranks' losses send to its rows
    (``torch.distributed.nn.functional.all_gather``).

    Returns:
        ``(W * n, ...)``; ``tensor`` itself on one process.
    """
    if world_size() == 1:
        return tensor
    return torch.cat(dist_nn.all_gather(tensor.contiguous()))


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates every rank's rows in rank order, without gradient.

    Args:
        tensor: this rank's ``(n_rank, ...)`` rows; ``n_rank`` may differ between ranks.

    Returns:
        ``(sum of n_rank, ...)`` on every rank; ``tensor`` itself on one process.
    """
    if world_size() == 1:
        return tensor
    count = torch.tensor([len(tensor)], device=tensor.device)
    counts = [torch.empty_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:n] for rows, n in zip(gathered, counts, strict=True)])


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over ranks (the same shape on every rank), in
    one all-reduce; ``tensor`` itself in one process."""
    if world_size() == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def average_gradients(parameters: Iterator[nn.Parameter]) -> None:
    """Averages the gradients of parameters outside DDP (center-loss centers) over ranks."""
    if world_size() == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world_size()


def shard(num_items: int) -> range:
    """This rank's contiguous part of ``range(num_items)``, as even as possible; the
    ranks' parts, in rank order, cover it exactly once."""
    size, extra = divmod(num_items, world_size())
    start = rank() * size + min(rank(), extra)
    return range(start, start + size + (rank() < extra))
