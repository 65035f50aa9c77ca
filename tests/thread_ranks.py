"""N ranks as N threads of one process: a stand-in for MPI in tests, so the plain `pytest` checks the split.

The collectives meet at a barrier and read each other's arrays from shared memory; the sum is taken in
rank order. This is a test double, not a transport: `distributed.py` uses MPI and NCCL.
"""
from __future__ import annotations

import threading

from tinyllama_ref.backend import xp_of


class ThreadComm:
    """Rank `rank` of a group of threads: `rank`, `size`, `all_reduce`, `all_gather`, as `distributed.MPIComm`."""

    def __init__(self, group: "ThreadGroup", rank: int):
        self.group, self.rank, self.size = group, rank, group.size

    def all_gather(self, x):
        g = self.group
        g.slots[self.rank] = x
        g.barrier.wait()
        out = xp_of(x).stack(list(g.slots))
        g.barrier.wait()  # nobody overwrites a slot before every rank has read it
        return out

    def all_reduce(self, x):
        pieces = self.all_gather(x)
        return sum(pieces[r] for r in range(1, self.size)) + pieces[0] if self.size > 1 else pieces[0]


class ThreadGroup:
    def __init__(self, size: int):
        self.size, self.slots, self.barrier = size, [None] * size, threading.Barrier(size, timeout=120)


def run_ranks(size: int, fn) -> list:
    """fn(comm) on `size` threads at once; their results in rank order. An error on one rank is raised here."""
    group = ThreadGroup(size)
    results, errors = [None] * size, []

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(group, rank))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors:
        raise (real or errors)[0]
    return results
