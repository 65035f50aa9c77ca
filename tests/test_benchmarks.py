"""The benchmark scripts run from a fresh clone with their documented commands, so that none of them rots.

Smoke runs only, with tiny sizes: nothing here looks at a time (speed is measured by running the scripts
themselves, see docs/guides/performance.md). What is checked is that each script finishes, prints its
table, and, where the peer is installed, that both implementations chose the same greedy tokens.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from realdata import mistral_tokenizer_path

REPO = Path(__file__).resolve().parent.parent
HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch and transformers are not installed "
                                                       "(pip install -e '.[parity]')")


def run_script(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def table_rows(out: str, impl: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if f" {impl} " in f" {line} "]


def without_torch(tmp_path) -> dict:
    """An environment whose Pythons cannot import torch or transformers, as on a machine without them."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, NoTorch())\n")
    return {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{REPO}"}


def test_the_gpu_benchmark_says_in_one_line_what_is_missing(tmp_path):
    """No GPU, or no torch: one line on stderr naming it and how to get it, exit 1, no traceback."""
    runs = [[]] if importlib.util.find_spec("cupy") is None else []  # here no CuPy: the first thing it names
    runs += [["--cpu-smoke"]]
    for args in runs:
        proc = subprocess.run([sys.executable, "benchmarks/gpu.py", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env=without_torch(tmp_path))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith("benchmarks/gpu.py: ")
        assert ("needs CuPy" in line) if not args else ("torch is not installed" in line and "pip install" in line)


def test_cpu_benchmark_runs_our_column_when_torch_cannot_be_imported(tmp_path):
    env = without_torch(tmp_path)
    proc = subprocess.run([sys.executable, "benchmarks/cpu.py", "--models", "bundled", "--prompt-tokens", "8",
                           "--new-tokens", "4", "--bandwidth-mib", "16", "--no-training"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "only the tinyllama_ref column" in proc.stderr and "pip install torch==2.13.0" in proc.stderr
    assert [r for r in table_rows(proc.stdout, "tinyllama_ref") if r[0] == "bundled"]
    assert not table_rows(proc.stdout, "eager")


def test_cpu_benchmark_bundled_without_torch():
    out = run_script("benchmarks/cpu.py", "--models", "bundled", "--prompt-tokens", "8", "--new-tokens", "4",
                     "--no-torch", "--bandwidth-mib", "16", "--no-training")
    (row,) = [r for r in table_rows(out, "tinyllama_ref") if r[0] == "bundled"]
    prefill, decode = float(row[2]), float(row[3])
    assert prefill > 0 and decode > 0
    assert "matvecs alone" in out and "float32 matvec bandwidth" in out


@needs_torch
def test_cpu_benchmark_bundled_against_torch():
    out = run_script("benchmarks/cpu.py", "--models", "bundled", "--prompt-tokens", "16", "--new-tokens", "6",
                     "--bandwidth-mib", "16")
    assert "bundled: greedy tokens identical to transformers: True" in out
    assert table_rows(out, "torch") and table_rows(out, "ratio")
    long = [r for r in table_rows(out, "ours") if r[0] == "bundled"]
    assert long and long[0][2] == "256" and float(long[0][4]) > 0  # the long prefill, cut to the context
    assert "training step" in out and float(table_rows(out, "s/step")[0][1]) > 0


@needs_torch
def test_gpu_benchmark_cpu_smoke():
    """Both peers are the same model as ours: last-position logits within float32 parity, same tokens.

    (Greedy tokens alone are a weak check on random weights: the peer once ran with uninitialised
    rotary frequencies, 5e-3 off in the logits, and still chose the same tokens.)
    """
    out = run_script("benchmarks/gpu.py", "--cpu-smoke", "--prompt-tokens", "16", "--new-tokens", "4")
    for attn in ("eager", "sdpa"):
        (line,) = [ln for ln in out.splitlines() if f"transformers {attn}" in ln]
        gap = float(re.search(r"max\|Δlogits\| (\S+),", line).group(1))
        assert gap <= 1e-4 and "same greedy tokens" in line, line


def test_tokenizer_benchmark_small():
    pytest.importorskip("sentencepiece", reason="sentencepiece is the peer (pip install -e '.[test]')")
    model = mistral_tokenizer_path()
    out = run_script("benchmarks/tokenizer.py", "--model", str(model), "--mb", "0.05")
    assert "ids identical on all" in out and "ratio ours/sentencepiece" in out


def run_gpu_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(["bash", "benchmarks/gpu_check.sh", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_gpu_check_stops_clearly_without_a_gpu():
    if subprocess.run("nvidia-smi -L", shell=True, capture_output=True).returncode == 0:
        pytest.skip("a GPU is visible here: the script would run for real")
    r = run_gpu_check()
    assert r.returncode == 1 and "no NVIDIA GPU is visible" in r.stderr and "Traceback" not in r.stderr


@needs_torch
def test_gpu_check_plumbing_on_the_cpu(tmp_path):
    """`--cpu-smoke`: the same stages (GPU tests, which skip here; the benchmark on its CPU smoke shape), one report."""
    r = run_gpu_check("--cpu-smoke", env={"OUT": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    assert report == r.stdout and "GPU tests (pytest -m gpu): " in report and " skipped" in report
    assert "| smoke | tinyllama_ref |" in report and "| smoke | transformers sdpa |" in report
    assert "PASS  max|Δlogits| against eager transformers, float32" in report
    assert "Pointwise kernels in the benchmark: none" in report  # NumPy: no fused kernel ran


def test_training_benchmark_prints_its_table():
    out = run_script("benchmarks/training.py", "--threads", "1", "--batch-size", "1", "--seq-len", "8", "--repeats", "1")
    ours, ours_ckpt = [r for r in table_rows(out, "ours") if r[0] == "ours"], table_rows(out, "ours-checkpoint")
    assert len(ours) == 1 and len(ours_ckpt) == 1
    assert ours[0][-1] == ours_ckpt[0][-1]  # the same first loss with and without recomputation
    if HAS_TORCH:
        (theirs,) = [r for r in table_rows(out, "torch") if r[0] == "torch"]
        assert abs(float(theirs[-1]) - float(ours[0][-1])) < 1e-3  # same weights, same batch, same loss
        assert "ratio (torch s/step / ours s/step)" in out


@pytest.mark.skipif(shutil.which("mpirun") is None or importlib.util.find_spec("mpi4py") is None,
                    reason="benchmarks/tp.py runs under mpirun: apt-get install openmpi-bin libopenmpi-dev, then "
                           "pip install mpi4py (.ci/run's last step does)")
def test_tp_benchmark_smoke_on_a_tiny_shape(tmp_path):
    out = run_script("benchmarks/tp.py", "--shape", "tiny", "--prompt-tokens", "8", "--new-tokens", "4",
                     "--cache", str(tmp_path))
    rows = {}
    for line in out.splitlines():  # the speed table's rows come before the projection's
        if line.split()[:1] in (["1"], ["2"]):
            rows.setdefault(line.split()[0], line.split())
    assert rows["1"][-1] == rows["2"][-1] == "same"  # 2 ranks chose the plain process's greedy tokens
    assert "Llama-2-70B" in out and "all-reduce on 2 ranks" in out
