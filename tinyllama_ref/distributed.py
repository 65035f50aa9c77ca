"""Ranks: the communicators of a tensor-parallel model, which slice each rank reads, and what only rank 0 does.

`tl.load(path, tensor_parallel="mpi")` inside `mpirun -n N` makes this process one rank of N. It reads
only its own slices (`rank_slicing`: the rules of `tensor_parallel.py`, handed to the file readers),
and its model's layer sums and gathers through a communicator with two collectives:

- `MPIComm`: NumPy arrays through MPI (mpi4py's COMM_WORLD);
- `NCCLComm`: CuPy arrays through NCCL (`cupyx.distributed`, set up over MPI), one GPU per rank.

Both are existing engines; nothing here moves bytes by itself. Any object with `rank`, `size`,
`all_reduce(x)` and `all_gather(x)` can stand in (`tensor_parallel=comm`): the tests hand in one.
The command line (`--tensor-parallel`) prints on rank 0 only, and rank 0 reads chat input for all.
"""
from __future__ import annotations

import os
import sys
from functools import partial

import numpy as np

from .config import ConfigError
from .formats.checkpoint import Slicing
from .tensor_parallel import rank_index

INSTALL = ("tensor_parallel='mpi' needs MPI and mpi4py: apt-get install openmpi-bin libopenmpi-dev, then "
           "pip install mpi4py; then run under mpirun -n N")


class MPIComm:
    """The ranks of an MPI job, summing and gathering NumPy arrays (mpi4py's buffer collectives)."""

    def __init__(self, mpi_comm):
        from mpi4py import MPI

        self.mpi, self.MPI = mpi_comm, MPI
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()

    def all_reduce(self, x):
        """Every rank's x summed, on every rank. `x` is a fresh partial result: it is summed in place.
        float16 is summed in float32 (MPI has no float16) and rounded back."""
        buf = np.ascontiguousarray(x, dtype=np.float32 if x.dtype == np.float16 else x.dtype)
        self.mpi.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf.astype(x.dtype, copy=False)

    def all_gather(self, x):
        """Every rank's x, stacked in rank order: [size, *x.shape] on every rank (moved as bytes)."""
        x = np.ascontiguousarray(x)
        out = np.empty((self.size, *x.shape), dtype=x.dtype)
        self.mpi.Allgather(x.reshape(-1).view(np.uint8), out.reshape(self.size, -1).view(np.uint8))
        return out


class NCCLComm:
    """The ranks of an MPI job, one GPU each, summing and gathering CuPy arrays with NCCL (`cupyx.distributed`).

    MPI starts the ranks and hands out NCCL's id; the arrays never leave their GPUs.
    """

    def __init__(self, mpi_comm):
        import cupy
        import cupyx.distributed
        from mpi4py import MPI

        self.mpi, self.rank, self.size, self.xp = mpi_comm, mpi_comm.Get_rank(), mpi_comm.Get_size(), cupy
        host = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
        devices = cupy.cuda.runtime.getDeviceCount()
        if host.Get_size() > devices:
            raise RuntimeError(f"tensor_parallel on CuPy needs one GPU per rank: {host.Get_size()} ranks on this "
                               f"machine, {devices} GPU(s)")
        cupy.cuda.Device(host.Get_rank()).use()
        self.nccl = cupyx.distributed.init_process_group(self.size, self.rank, use_mpi=True)

    def all_reduce(self, x):
        """Every rank's x summed, on every rank, on the GPU."""
        x = self.xp.ascontiguousarray(x)
        out = self.xp.empty_like(x)
        self.nccl.all_reduce(x, out, "sum")
        return out

    def all_gather(self, x):
        """Every rank's x, stacked in rank order: [size, *x.shape] on every rank, on the GPU."""
        x = self.xp.ascontiguousarray(x)
        out = self.xp.empty((self.size, *x.shape), dtype=x.dtype)
        self.nccl.all_gather(x, out, x.size)
        return out


def communicator(tensor_parallel, xp=np):
    """The communicator for `tl.load(..., tensor_parallel=...)`: "mpi" (MPI's world; NCCL when `xp` is CuPy),
    or a communicator object handed in as it is."""
    if not isinstance(tensor_parallel, str):
        if all(hasattr(tensor_parallel, a) for a in ("rank", "size", "all_reduce", "all_gather")):
            return tensor_parallel
        raise ValueError(f"tensor_parallel must be 'mpi' or a communicator (rank, size, all_reduce, all_gather), "
                         f"got {tensor_parallel!r}")
    if tensor_parallel != "mpi":
        raise ValueError(f"tensor_parallel={tensor_parallel!r} is not known: the one choice is 'mpi'")
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:  # RuntimeError: mpi4py without its MPI library
        raise ImportError(f"{INSTALL} ({e})") from None
    return MPIComm(MPI.COMM_WORLD) if xp is np else NCCLComm(MPI.COMM_WORLD)


def check_splittable(config: dict, size: int) -> None:
    """Refuse a model whose key/value heads cannot be shared out whole: a rank holds g/N of them, each
    with its query heads (`tensor_parallel.py`)."""
    kv = config.get("num_key_value_heads") or config["num_attention_heads"]
    if kv % size:
        raise ConfigError(f"tensor_parallel over {size} ranks needs num_key_value_heads ({kv}) divisible by "
                          f"{size}: each rank holds whole key/value heads; run on a number of ranks that divides {kv}")


def rank_slicing(comm) -> Slicing:
    """What this rank reads of each tensor (`tensor_parallel.rank_index`), for the file readers."""
    return Slicing(comm.rank, comm.size, partial(rank_index, rank=comm.rank, size=comm.size),
                   partial(check_splittable, size=comm.size))


# -- the command line: rank 0 speaks ---------------------------------------------------------------

def quiet_unless_root(comm) -> None:
    """On every rank but 0, send stdout and stderr to /dev/null (file descriptors too): one voice per job."""
    if comm.rank == 0:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)


def root_input(comm, read=input):
    """An `input` for chat: rank 0 reads the line (or meets the end of input) and every rank receives it."""

    def read_on_root(prompt: str = "") -> str:
        line = None
        if comm.rank == 0:
            try:
                line = read(prompt)
            except EOFError:
                line = EOFError
        line = comm.mpi.bcast(line, root=0)
        if line is EOFError:
            raise EOFError
        return line

    return read_on_root
