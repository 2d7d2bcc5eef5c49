"""Sharing the report among processes with Accelerate: under `torchrun` / `accelerate launch` (a torch.distributed
group is running) each process evaluates a contiguous run of whole batches (`batch_share`, Accelerate's
`split_between_processes` over the batch indices: the first processes take one batch more when they do not divide
evenly), and the processes' tallies are gathered and merged (`gather_tally`, Accelerate's `gather_object`). Without
a group, one process evaluates every batch and nothing is gathered."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from .tally import Tally


@dataclass(frozen=True)
class Share:
    """The batches this process evaluates: global indices `first` to `stop - 1` of `count`; `process` of
    `processes` (`grouped`: a torch.distributed group runs, even of one process)."""

    first: int
    stop: int
    count: int
    process: int = 0
    processes: int = 1
    grouped: bool = False

    def describe(self) -> str:
        batches = f"batches {self.first}-{self.stop - 1} of {self.count}" if self.stop > self.first else "no batch"
        if not self.grouped:
            return f"{batches} (one process)"
        return f"{batches} (process {self.process} of {self.processes})"


def process_state() -> PartialState | None:
    """Accelerate's state of the running torch.distributed group, or None when there is none. Refuses a state that
    disagrees with the group (one made before the group started): each process would evaluate every batch."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    state = PartialState(cpu=torch.distributed.get_backend() == "gloo")
    if state.num_processes != torch.distributed.get_world_size():
        raise RuntimeError(
            f"Accelerate's state counts {state.num_processes} processes but torch.distributed runs "
            f"{torch.distributed.get_world_size()}: it was set up before the group, or the group was started without "
            "a launcher's environment (LOCAL_RANK). Evaluate under torchrun or accelerate launch."
        )
    return state


def batch_share(count: int, split: bool = True) -> Share:
    """This process's share of `count` batches (all of them without a process group, or when not `split`)."""
    state = process_state()
    if state is None:
        return Share(0, count, count)
    if not split:
        return Share(0, count, count, state.process_index, state.num_processes, grouped=True)
    with state.split_between_processes(list(range(count))) as mine:
        first = mine[0] if mine else count
        stop = first + len(mine)
    return Share(first, stop, count, state.process_index, state.num_processes, grouped=True)


def gather_tally(tally: Tally) -> Tally:
    """Every process's tally merged, in process order (this one's without a process group)."""
    if process_state() is None:
        return tally
    merged, *others = gather_object([tally])
    for other in others:
        merged = merged.merge(other)
    return merged
