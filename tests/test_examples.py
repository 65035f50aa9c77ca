"""Run every script in examples/ with fast settings, so that none of them rots.

Each example is run as a user would run it (a subprocess, from the repository root) and must exit 0
and print "wrote PATH" for files that exist. They use the bundled model; while the package has none
(tinyllama_ref/assets/ empty), a small random checkpoint with a freshly trained SentencePiece
tokenizer stands in, passed with --model.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
FAST = {  # script -> extra arguments that keep it to a few seconds
    "generate.py": ["--max-new-tokens", "8"],
    "tokenizer_walkthrough.py": [],
    "rope_variants.py": [],
    "attention_map.py": ["--layer", "1", "--head", "3"],
    "kv_cache.py": ["--steps", "4"],
    "parity_check.py": ["--prompt", "In the beginning God"],
}
NEEDS_MATPLOTLIB = {"rope_variants.py", "attention_map.py"}
NEEDS_MODEL = {"generate.py", "tokenizer_walkthrough.py", "attention_map.py", "kv_cache.py", "parity_check.py"}


def _stand_in_model(root: Path) -> Path:
    """A random LLaMA (GQA, 2 layers) with a SentencePiece BPE tokenizer trained here (LLaMA's settings)."""
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece is needed to train the stand-in tokenizer")
    import numpy as np

    from tinyllama_ref.config import LlamaConfig
    from tinyllama_ref.formats.checkpoint import random_tensors
    from tinyllama_ref.formats.safetensors import write_safetensors

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    lines = [l.strip() for f in sorted((REPO / "tinyllama_ref").glob("*.py"))
             for l in f.read_text(encoding="utf-8").splitlines() if l.strip()]
    corpus.write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "tokenizer"), model_type="bpe", vocab_size=600,
        byte_fallback=True, character_coverage=0.9995, split_digits=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2, num_threads=1)
    config = LlamaConfig(vocab_size=600, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    (root / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    write_safetensors(root / "model.safetensors", random_tensors(config, seed=0, std=0.1, dtype=np.float32))
    return root


@pytest.fixture(scope="module")
def model_args(tmp_path_factory) -> list[str]:
    """[] when the bundled model exists (the examples' default); else --model and a stand-in checkpoint."""
    from tinyllama_ref.cli import CLIError, default_model_dir

    try:
        default_model_dir()
        return []
    except CLIError:
        return ["--model", str(_stand_in_model(tmp_path_factory.mktemp("stand_in_model")))]


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(FAST)


@pytest.mark.parametrize("script", sorted(FAST))
def test_example_runs(script, model_args, tmp_path):
    if script in NEEDS_MATPLOTLIB:
        pytest.importorskip("matplotlib", reason=f"{script} draws with matplotlib (pip install '.[docs]')")
    out = tmp_path / "out"
    args = [sys.executable, str(EXAMPLES / script), "--out", str(out), *FAST[script]]
    if script in NEEDS_MODEL:
        args += model_args
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    written = [Path(p) for p in re.findall(r"^wrote (.+)$", proc.stdout, flags=re.M)]
    assert written, f"{script} printed no 'wrote PATH' line:\n{proc.stdout}"
    for path in written:
        assert path.is_file() and path.stat().st_size > 0, f"{script} says it wrote {path}, which is missing or empty"
        assert out in path.parents, f"{script} wrote {path} outside --out {out}"
