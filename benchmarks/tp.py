"""Tensor parallelism on the CPU: prefill and decode tok/s on 1 and 2 MPI ranks, the all-reduce's share of each
step, the all-reduce's measured speed, and a projection, on paper, for a 70B model on N machines.

Each rank runs one BLAS thread (OPENBLAS_NUM_THREADS=1), so N ranks use N cores. The model is the
TinyLlama-1.1B shape with random float32 weights (benchmarks/cpu.py TINYLLAMA_1B), written once to --cache.
The first row runs without tensor parallelism (plain `tl.load`), the others under `mpirun -n N` with
`tensor_parallel="mpi"`; the collectives are timed from outside (a communicator that wraps MPI's).

    python benchmarks/tp.py                            # N = 1 and 2, 128-token prompt, 32 new tokens
    python benchmarks/tp.py --ranks 1 2 4 --prompt-tokens 64 --new-tokens 16
    python benchmarks/tp.py --shape tiny               # a seconds-long smoke run (what tests/test_benchmarks.py runs)

Needs Open MPI and mpi4py (README, "Tensor parallelism"). Speed is measured here, never asserted by a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from cpu import TINYLLAMA_1B, bytes_read_per_token, make_random_checkpoint, weight_bytes  # noqa: E402
from timing import last_position, time_greedy  # noqa: E402

TINY = dict(TINYLLAMA_1B, vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=2)
# Llama-2-70B (Touvron et al. 2023, table 1; GQA with 8 key/value heads)
LLAMA2_70B = dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64, num_key_value_heads=8)
# all-reduce sizes: 8 KiB (one token's D = 2048 floats), 32 KiB (D = 8192: 70B), 256 KiB, 4 MiB, 32 MiB
PROBE_FLOATS = [2**11, 2**13, 2**16, 2**20, 2**23]


class Timed:
    """A communicator that counts the seconds, calls and bytes of the collectives of the one it wraps."""

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.seconds, self.calls, self.bytes = 0.0, 0, 0

    def _timed(self, collective, x):
        t0 = time.perf_counter()
        y = collective(x)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.bytes += x.nbytes
        return y

    def all_reduce(self, x):
        return self._timed(self.comm.all_reduce, x)

    def all_gather(self, x):
        return self._timed(self.comm.all_gather, x)

    def reset(self) -> tuple[float, int, int]:
        taken = (self.seconds, self.calls, self.bytes)
        self.seconds, self.calls, self.bytes = 0.0, 0, 0
        return taken


# -- the worker: one rank (or the plain process) ------------------------------------------------------

def worker(model_dir: str, prompt_tokens: int, new_tokens: int, parallel: bool) -> dict:
    import numpy as np

    import tinyllama_ref as tl

    comm = None
    if parallel:
        from tinyllama_ref.distributed import communicator

        comm = Timed(communicator("mpi"))
    t0 = time.perf_counter()
    model = tl.load(model_dir, tensor_parallel=comm)
    load_s = time.perf_counter() - t0
    ids = (np.arange(prompt_tokens) * 7919 + 11) % model.config.vocab_size
    model(ids[:4][None])  # warm-up
    if comm is not None:
        comm.reset()
    prefill_s, decode_s, tokens, _ = time_greedy(
        lambda: last_position(model(ids[None], use_cache=True, logits_to_keep=1)),
        lambda token, cache: last_position(model([[token]], past_key_values=cache, use_cache=True)), new_tokens)
    out = dict(load_s=load_s, prefill_s=prefill_s, decode_s=decode_s,
               tokens=tokens)
    if comm is not None:
        # the same run again, its collectives' seconds against its own wall clock: prefill, then the decode steps
        comm.reset()
        t0 = time.perf_counter()
        logits, cache = last_position(model(ids[None], use_cache=True, logits_to_keep=1))
        out["prefill_comm"] = (*comm.reset(), time.perf_counter() - t0)
        t0 = time.perf_counter()
        for token in tokens[:-1]:
            logits, cache = last_position(model([[token]], past_key_values=cache, use_cache=True))
        out["decode_comm"] = (*comm.reset(), time.perf_counter() - t0)
        out["probe"] = probe(comm.comm)
        return comm.comm.mpi.gather(out, root=0)  # rank 0 prints every rank's; the others None
    return [out]


def probe(comm, repeats: int = 20) -> list[tuple[int, float]]:
    """(bytes, best seconds) of an all-reduce of float32 arrays of each size in PROBE_FLOATS."""
    import numpy as np

    out = []
    for n in PROBE_FLOATS:
        x = np.ones(n, np.float32)
        best = float("inf")
        for _ in range(repeats if n < 2**20 else 5):
            comm.mpi.Barrier()
            t0 = time.perf_counter()
            comm.all_reduce(x.copy())
            best = min(best, time.perf_counter() - t0)
        out.append((4 * n, best))
    return out


# -- the driver ---------------------------------------------------------------------------------------

def run(ranks: int, model_dir: Path, args) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    worker_cmd = [sys.executable, str(Path(__file__)), "--worker", str(model_dir), str(args.prompt_tokens),
                  str(args.new_tokens)]
    if ranks == 0:  # the plain process: no tensor parallelism
        cmd = worker_cmd + ["plain"]
    else:
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        cmd = ["mpirun", "--oversubscribe", *root, "-n", str(ranks), "-x", "PYTHONPATH", "-x", "OPENBLAS_NUM_THREADS",
               "-x", "OMP_NUM_THREADS", *worker_cmd, "mpi"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd[:8])}... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"ranks": lines[0]}


def matvec_bandwidth() -> float:
    """GB/s of one large float32 matrix-vector product on one thread (benchmarks/cpu.py's probe)."""
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import cpu; print(cpu.worker_bandwidth(256)['gb_s'])"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.split()[-1])


def ring_allreduce_s(n: int, nbytes: int, latency_s: float, bus_gb_s: float) -> float:
    """A ring all-reduce over n ranks (what MPI and NCCL do for large messages): 2(n-1) steps, each paying the
    latency, moving 2(n-1)/n of the bytes in all at the bus bandwidth."""
    return 0.0 if n == 1 else 2 * (n - 1) * latency_s + 2 * (n - 1) / n * nbytes / (bus_gb_s * 1e9)


def projection(mem_gb_s: float, latency_s: float, bus_gb_s: float, link: str, machines=(1, 2, 4, 8, 16)) -> list[str]:
    """Decode tok/s of Llama-2-70B in float32 on N machines, on paper: each machine streams its 1/N of the
    weights at `mem_gb_s`, and each step adds 2 all-reduces per layer of one token's D floats, and 2 gathers
    (counted as all-reduces), each a ring all-reduce of the given latency and bus bandwidth."""
    c = LLAMA2_70B
    D, F, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    d = D // c["num_attention_heads"]
    per_layer = D * D * 2 + 2 * D * c["num_key_value_heads"] * d + 3 * D * F
    weights = 4 * (L * per_layer + 2 * V * D)
    rows = [f"{'N':>3} {'weights/machine GB':>19} {'stream ms':>10} {'all-reduce us':>14} {'comm ms':>8} "
            f"{'tok/s':>7}   ({link})"]
    for n in machines:
        stream = weights / n / (mem_gb_s * 1e9)
        one = ring_allreduce_s(n, 4 * D, latency_s, bus_gb_s)
        comm = (2 * L + 2) * one
        rows.append(f"{n:>3} {weights / n / 1e9:>19.1f} {stream * 1e3:>10.1f} {one * 1e6:>14.1f} {comm * 1e3:>8.2f} "
                    f"{1 / (stream + comm):>7.2f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--shape", choices=["tinyllama-1.1b", "tiny"], default="tinyllama-1.1b")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "tinyllama_ref_bench")
    args = ap.parse_args()
    if shutil.which("mpirun") is None:
        sys.exit("benchmarks/tp.py needs Open MPI and mpi4py: apt-get install openmpi-bin libopenmpi-dev, "
                 "then pip install mpi4py")
    shape = TINYLLAMA_1B if args.shape == "tinyllama-1.1b" else TINY
    model_dir = make_random_checkpoint(shape, args.cache / args.shape)
    load = os.getloadavg()
    bw = matvec_bandwidth()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} (1 min) at the start; one BLAS thread per "
          f"rank; float32 matvec bandwidth {bw:.1f} GB/s on one thread")
    print(f"model: {args.shape} shape, random float32 weights, {weight_bytes(model_dir) / 2**30:.2f} GiB; "
          f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens (greedy)")
    header = (f"{'ranks':>8} {'prefill tok/s':>14} {'decode tok/s':>13} {'all-reduce % prefill':>21} "
              f"{'all-reduce % decode':>20} {'collectives/step':>17} {'tokens':>7}")
    print(header)
    base_tokens, probes = None, {}
    for n in [0 if r == 1 else r for r in args.ranks]:  # 1: the plain process, no tensor parallelism
        result = run(n, model_dir, args)["ranks"]
        r0 = result[0]
        prefill, decode = args.prompt_tokens / r0["prefill_s"], (args.new_tokens - 1) / r0["decode_s"]
        base_tokens = base_tokens or r0["tokens"]
        same = "same" if r0["tokens"] == base_tokens else "DIFFER"
        if n == 0:
            print(f"{'1 (plain)':>8} {prefill:>14.1f} {decode:>13.2f} {'-':>21} {'-':>20} {'-':>17} {same:>7}")
            continue
        share_p = max(r["prefill_comm"][0] / r["prefill_comm"][3] for r in result)  # seconds in collectives / wall
        share_d = max(r["decode_comm"][0] / r["decode_comm"][3] for r in result)
        per_step = r0["decode_comm"][1] / max(args.new_tokens - 1, 1)
        print(f"{n:>8} {prefill:>14.1f} {decode:>13.2f} {100 * share_p:>20.1f}% {100 * share_d:>19.1f}% "
              f"{per_step:>17.0f} {same:>7}")
        probes[n] = r0["probe"]
    for n, probe_rows in probes.items():
        if n == 1:
            continue
        cells = ", ".join(f"{b / 1024:.0f} KiB {s * 1e6:.0f} us ({2 * (n - 1) / n * b / s / 1e9:.2f} GB/s bus)"
                          for b, s in probe_rows)
        print(f"all-reduce on {n} ranks (this machine's shared memory): {cells}")
    print(f"decode bandwidth limit, one process: {bw * 1e9 / bytes_read_per_token(model_dir):.2f} tok/s "
          f"({bytes_read_per_token(model_dir) / 2**30:.2f} GiB read per token)")
    if 2 in probes:
        measured = dict(probes[2])
        latency = measured[4 * PROBE_FLOATS[0]] / 2  # 8 KiB on 2 ranks: 2 steps, latency-bound
        bus = max(b / t / 1e9 for b, t in probes[2] if b >= 2**18)  # 256 KiB and up: bandwidth-bound (2 ranks:
        # a ring moves 2(n-1)/n = 1 times the bytes); the best of them, as a loaded machine slows some probes
        print("\nLlama-2-70B in float32 on N machines, on paper: each streams its 1/N of the weights at this "
              "machine's one-thread matvec bandwidth; every decode step adds 2 ring all-reduces per layer of one "
              "token's 32 KiB (+2 gathers)")
        for row in projection(bw, latency, bus, f"latency {latency * 1e6:.0f} us and bus {bus:.2f} GB/s, as "
                                                f"measured here between 2 processes"):
            print(row)
        for row in projection(bw, 50e-6, 1.25, "latency 50 us and bus 1.25 GB/s: an assumed 10 GbE link, not "
                                                "measured"):
            print(row)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        model_dir, prompt_tokens, new_tokens, mode = sys.argv[2:6]
        result = worker(model_dir, int(prompt_tokens), int(new_tokens), mode == "mpi")
        if result is not None:
            print("RESULT" + json.dumps(result))
    else:
        main()
