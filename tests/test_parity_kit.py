"""The parity kit, end to end: the walk-through of docs/guides/parity-kit.md, as tests.

Non-live: `compare` on synthetic dumps names the first divergence in forward order and exits 1.
Live (torch + transformers): build a tiny Hugging Face checkpoint, dump it with tools/dump_hf.py
and with `tinyllama-ref dump` (on NumPy, the CuPy double, and real CuPy when a GPU is present),
compare -> everything agrees; then plant a bug (RoPE applied to
interleaved pairs instead of half-split ones, monkeypatched here only) and check that compare
pins it to `layers.0.self_attn.q_rope`.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tinyllama_ref import cli
from tinyllama_ref.parity import compare, first_divergence, load_tensors, save_tensors

REPO = Path(__file__).resolve().parent.parent
RTOL, ATOL = 1e-3, 1e-4  # the compare tool's defaults: what a user gets without flags


# -- compare on synthetic dumps (no model, no torch) -------------------------------------------

def _synthetic_dump(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = ["input_ids", "embed_tokens"] + [f"layers.{i}.{n}" for i in range(2) for n in
                                              ("input_layernorm", "self_attn.q", "self_attn.q_rope", "output")]
    d = {n: rng.standard_normal((1, 5, 8)).astype(np.float32) for n in names[1:]}
    d["input_ids"] = np.array([[1, 5, 9, 2, 7]], dtype=np.int64)
    d["norm"] = rng.standard_normal((1, 5, 8)).astype(np.float32)
    d["logits"] = rng.standard_normal((1, 5, 16)).astype(np.float32)
    return d


def test_compare_names_the_first_divergence_in_forward_order(tmp_path):
    ours = _synthetic_dump()
    theirs = {k: v.copy() for k, v in ours.items()}
    theirs["layers.1.self_attn.q_rope"][0, 3, 2] += 0.5  # the first real difference
    theirs["logits"] += 1.0  # and everything downstream would differ too
    theirs["embed_tokens"] += 1e-6  # within tolerance: not a divergence
    # A dump written in a scrambled order is still compared in forward order.
    save_tensors(tmp_path / "ours.safetensors", ours)
    save_tensors(tmp_path / "theirs.npz", dict(reversed(list(theirs.items()))))
    rows = compare(load_tensors(tmp_path / "ours.safetensors"), load_tensors(tmp_path / "theirs.npz"), RTOL, ATOL)
    bad = first_divergence(rows)
    assert bad["name"] == "layers.1.self_attn.q_rope"
    assert bad["max_abs"] == pytest.approx(0.5, rel=1e-6)
    statuses = {r["name"]: r["status"] for r in rows}
    assert statuses["embed_tokens"] == "ok" and statuses["logits"] == "DIVERGES"


def test_compare_cli_exit_codes(tmp_path, capsys):
    ours = _synthetic_dump()
    save_tensors(tmp_path / "a.safetensors", ours)
    save_tensors(tmp_path / "same.safetensors", ours)
    assert cli.main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "same.safetensors")]) == 0
    assert "all 12 shared tensors agree" in capsys.readouterr().out

    broken = dict(ours, **{"layers.0.self_attn.q": ours["layers.0.self_attn.q"] * 1.01})
    save_tensors(tmp_path / "broken.safetensors", broken)
    assert cli.main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "broken.safetensors")]) == 1
    out = capsys.readouterr().out
    assert "first divergence: layers.0.self_attn.q " in out
    # A looser tolerance accepts a 1% difference.
    assert cli.main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "broken.safetensors"),
                     "--rtol", "0.02", "--atol", "0.02"]) == 0


def test_compare_shape_mismatch_and_missing_tensors(tmp_path, capsys):
    ours = _synthetic_dump()
    theirs = dict(ours)
    del theirs["norm"]  # a tensor only one side writes is listed, not a divergence
    theirs["extra"] = np.zeros(3, np.float32)
    theirs["layers.1.output"] = ours["layers.1.output"][:, :4]  # but a different shape is
    rows = compare(ours, theirs)
    statuses = {r["name"]: r["status"] for r in rows}
    assert statuses["norm"] == "only in ours" and statuses["extra"] == "only in theirs"
    assert first_divergence(rows)["name"] == "layers.1.output"
    assert statuses["layers.1.output"].startswith("shape (1, 5, 8) vs (1, 4, 8)")


def test_compare_missing_file_is_a_one_line_error(tmp_path, capsys):
    save_tensors(tmp_path / "a.safetensors", _synthetic_dump())
    assert cli.main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "nope.safetensors")]) == 1
    assert "dump not found" in capsys.readouterr().err


# -- the walk-through against transformers (live) --------------------------------------------

def apply_rope_interleaved(x, cos, sin):
    """The planted bug: Meta's interleaved pairs (x[2i], x[2i+1]) on weights in HF's half-split layout."""
    half = x.shape[-1] // 2
    c, s = cos[:, None, :, :half], sin[:, None, :, :half]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out


def _dump_hf_module():
    spec = importlib.util.spec_from_file_location("dump_hf", REPO / "tools" / "dump_hf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_hf_checkpoint(tmp_path_factory) -> Path:
    """Step 1 of the walk-through: a tiny Llama-2-style checkpoint (GQA) saved by transformers, with a
    SentencePiece tokenizer (LLaMA's settings) trained here on the package's own source text."""
    torch = pytest.importorskip("torch", reason="the live parity kit test needs torch (pip install '.[parity]')")
    transformers = pytest.importorskip("transformers", reason="the live parity kit test needs transformers")
    spm = pytest.importorskip("sentencepiece", reason="training the test tokenizer needs sentencepiece")
    root = tmp_path_factory.mktemp("tiny_hf")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(l.strip() for f in sorted((REPO / "tinyllama_ref").glob("*.py"))
                                for l in f.read_text(encoding="utf-8").splitlines() if l.strip()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "tokenizer"), model_type="bpe", vocab_size=512,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    (root / "corpus.txt").unlink()
    (root / "tokenizer.vocab").unlink()
    (root / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}), encoding="utf-8")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      initializer_range=0.1, rms_norm_eps=1e-5)
    transformers.LlamaForCausalLM(config).save_pretrained(str(root))
    return root


PROMPT = "The model rotates queries and keys by their position."


@pytest.fixture(scope="module")
def hf_dump(tiny_hf_checkpoint, tmp_path_factory) -> Path:
    """Step 2 of the walk-through: dump from transformers (once: every backend compares with it)."""
    import torch

    torch.set_num_threads(1)
    hf = tmp_path_factory.mktemp("hf_dump") / "hf.safetensors"
    assert _dump_hf_module().main(["--model", str(tiny_hf_checkpoint), "--prompt", PROMPT, "--out", str(hf)]) == 0
    return hf


@pytest.mark.live
def test_walkthrough_hf_and_ours_agree_then_a_planted_rope_bug_is_pinned(tiny_hf_checkpoint, hf_dump, backend,
                                                                           tmp_path, monkeypatch, capsys):
    model = str(tiny_hf_checkpoint)
    hf, ours, broken = hf_dump, tmp_path / "ours.safetensors", tmp_path / "broken.safetensors"
    on = ["--backend", backend.model_backend]  # our side runs on NumPy, the CuPy double, or real CuPy
    # Step 3: dump from us.
    assert cli.main(["dump", "--model", model, "--prompt", PROMPT, "--out", str(ours), *on]) == 0
    # Step 4: compare: every tensor agrees, token ids included.
    capsys.readouterr()
    assert cli.main(["compare", str(ours), str(hf)]) == 0, capsys.readouterr().out
    rows = compare(load_tensors(ours), load_tensors(hf))
    assert [r["status"] for r in rows] == ["ok"] * len(rows)
    assert len(rows) == 2 + 2 * 16 + 2  # input_ids, embed_tokens, 16 per layer, norm, logits
    assert load_tensors(hf)["input_ids"].shape[1] > 4  # several positions: position 0 is never rotated
    worst = max(r["max_abs"] for r in rows)
    assert worst < 1e-4, f"largest difference {worst:.2e}"

    # Step 5: a broken implementation. Its dump diverges first at layer 0's rotated queries.
    import dataclasses

    import tinyllama_ref.model

    def broken_ops(*args, real=tinyllama_ref.model.layer_ops):  # the bug, handed to the one layer as a variant
        return dataclasses.replace(real(*args), apply_rope=apply_rope_interleaved)

    monkeypatch.setattr(tinyllama_ref.model, "layer_ops", broken_ops)
    assert cli.main(["dump", "--model", model, "--prompt", PROMPT, "--out", str(broken), *on]) == 0
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main(["compare", str(broken), str(hf)]) == 1
    out = capsys.readouterr().out
    assert "first divergence: layers.0.self_attn.q_rope " in out, out
    bad = first_divergence(compare(load_tensors(broken), load_tensors(hf)))
    assert bad["name"] == "layers.0.self_attn.q_rope"
    # Everything before it still agrees: the bug is in the rotation, not in the projections.
    rows = compare(load_tensors(broken), load_tensors(hf))
    before = [r for r in rows[:[r["name"] for r in rows].index("layers.0.self_attn.q_rope")]]
    assert all(r["status"] == "ok" for r in before) and before[-1]["name"] == "layers.0.self_attn.v"


def test_the_parity_kit_guide_lists_the_names_the_code_writes():
    """docs/guides/parity-kit.md has a table of the dump names: it must match tinyllama_ref.parity."""
    from tinyllama_ref.parity import LAYER_ORDER, forward_order_key

    guide = (REPO / "docs" / "guides" / "parity-kit.md").read_text(encoding="utf-8")
    names = []
    for row in guide.split("## The names", 1)[1].split("##", 1)[0].splitlines():
        if row.startswith("| `"):
            cell = row.split("|")[1]
            parts = [p.strip(" `") for p in cell.split("/")]
            head = parts[0]
            names.append(head)
            names += [head.rsplit(".", 1)[0] + p if p.startswith(".") else p for p in parts[1:]]
    layer = [n[len("layers.N."):] for n in names if n.startswith("layers.N.")]
    assert layer == LAYER_ORDER
    assert [n for n in names if not n.startswith("layers.N.")] == ["input_ids", "embed_tokens", "norm", "logits"]
    concrete = [n.replace("layers.N.", "layers.0.") for n in names]
    assert sorted(concrete, key=forward_order_key) == concrete
