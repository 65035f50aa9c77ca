"""The conformance pack (tinyllama_ref/golden_pack.py): regenerated, deterministic, checked, read by compare.

The whole pack is regenerated once per run (about 2 s). Without torch: its layout, its size, that
two runs write the same bytes, the `golden` command, and that `compare` on a perturbed dump names
the right first tensor. With torch and transformers 5.x: every Llama case loaded by transformers
(float32, eager attention) from the pack's own config.json and model.safetensors, run on the pack's
inputs (prefill, three decode steps through transformers' KV cache, the padded batch): logits,
hidden states and attention probabilities must equal the pack's. Open-Llama left transformers in
5.0, so its case is checked against transformers' Llama with a LayerNorm hooked after the
embedding and the head tied (what Open-Llama adds), and against our own plain forward. The
manifest's float16 / bfloat16 tolerances are checked to be met by transformers computing in those
dtypes (and float16 by our own float16 compute, every intermediate). The figures print at the end:

    python -m pytest tests/test_golden_pack.py -s
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref import cli
from tinyllama_ref.backend import to_numpy
from tinyllama_ref.golden_pack import CASES, INPUTS, TENSOR_NAMES, TOLERANCES, case_inputs, write_pack
from tinyllama_ref.parity import LAYER_ORDER, load_tensors, save_tensors, trace_forward
from conftest import needs_transformers, record_parity

TOL_LOGITS = 1e-4  # max |Δ| against transformers in float32, as tests/test_golden.py
TOL_HIDDEN = 1e-4
TOL_ATTN = 1e-5
PACK_BYTES = 5_000_000  # the pack should stay small enough to vendor into another project's tests
LLAMA_CASES = [c.name for c in CASES if c.name != "open_llama"]


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("pack")
    write_pack(out)
    return out


def files_of(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- the pack itself ------------------------------------------------------------------------------

def test_pack_layout_names_and_size(pack):
    manifest = json.loads((pack / "manifest.json").read_text())
    assert list(manifest["cases"]) == [c.name for c in CASES]
    assert manifest["bytes"] < PACK_BYTES, f"the pack grew to {manifest['bytes']} bytes"
    assert set(manifest["tolerances"]) == {"float32", "float16", "bfloat16"}
    rope_types = {(c["config"]["rope_scaling"] or {"rope_type": "default"})["rope_type"]
                  for c in manifest["cases"].values()}
    assert rope_types == {"default", "linear", "dynamic", "yarn", "longrope", "llama3"}
    for name, entry in manifest["cases"].items():
        tl.load(pack / name)  # the checkpoint loads as written
        assert json.loads((pack / name / "config.json").read_text()) == entry["config"]
        n_layers = entry["config"]["num_hidden_layers"]
        for input_name in INPUTS:
            dump = load_tensors(pack / name / entry["inputs"][input_name])
            want = [k for k in TENSOR_NAMES if not k.startswith("layers.")] + \
                   [f"layers.{i}.{sub}" for i in range(n_layers) for sub in LAYER_ORDER]
            if input_name != "batch":
                want.remove("attention_mask")
            assert sorted(dump) == sorted(want), f"{name}/{input_name}"
            assert all(v.dtype == (np.int64 if k in ("input_ids", "attention_mask", "position_ids") else np.float32)
                       for k, v in dump.items())
            assert np.isfinite(dump["logits"]).all()
    decode = load_tensors(pack / "gqa" / "decode_2.safetensors")
    assert decode["layers.0.self_attn.probs"].shape == (1, 4, 1, 11)  # 8 prefill + 3 decode keys
    assert decode["layers.0.self_attn.k"].shape == (1, 2, 1, 8)  # the new token's keys only


def test_pack_is_deterministic(pack, tmp_path):
    write_pack(tmp_path)
    first, second = files_of(pack), files_of(tmp_path)
    assert list(first) == list(second)
    changed = [str(k) for k in first if first[k] != second[k]]
    assert not changed, f"regenerating the pack changed {changed}"


def test_inputs_continue_and_pad_as_documented():
    inputs = case_inputs(CASES[0], 64)
    assert [inputs[f"decode_{k}"]["position_ids"].item() for k in range(3)] == [8, 9, 10]
    batch = inputs["batch"]
    assert batch["attention_mask"][1].tolist() == [0, 0, 0] + [1] * 7
    assert batch["position_ids"][1].tolist() == [1, 1, 1, 0, 1, 2, 3, 4, 5, 6]


def test_padded_row_equals_the_row_alone(pack):
    """The batch's left-padded row, at its real positions, is the same sequence run unpadded."""
    model = tl.load(pack / "gqa")
    batch = load_tensors(pack / "gqa" / "batch.safetensors")
    alone = trace_forward(model, batch["input_ids"][1:, 3:])
    np.testing.assert_allclose(batch["logits"][1, 3:], alone["logits"][0], atol=1e-5)


def test_golden_command(tmp_path, capsys):
    out = tmp_path / "pack"
    assert cli.main(["golden", "--out", str(out), "--cases", "mha", "bfloat16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bfloat16", "manifest.json", "mha"]
    assert "total" in capsys.readouterr().out
    assert cli.main(["golden", "--out", str(out), "--cases", "mha"]) == 1  # not over an existing pack
    assert "--force" in capsys.readouterr().err
    assert cli.main(["golden", "--out", str(out), "--cases", "mha", "--force"]) == 0
    capsys.readouterr()
    assert cli.main(["golden", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(c.name in listed for c in CASES)
    assert cli.main(["golden", "--out", str(tmp_path / "x"), "--cases", "nope"]) == 1
    assert "unknown case" in capsys.readouterr().err


# -- compare against the pack -------------------------------------------------------------------

def copy_case(pack, case, dest):
    """An implementer's dump directory that agrees with the pack: every input, read back and rewritten."""
    dest.mkdir()
    for name in INPUTS:
        save_tensors(dest / f"{name}.npz", load_tensors(pack / case / f"{name}.safetensors"))
    return dest


def test_compare_agrees_with_an_exact_copy(pack, tmp_path, capsys):
    theirs = copy_case(pack, "mqa", tmp_path / "theirs")
    assert cli.main(["compare", str(pack / "mqa"), str(theirs)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("mqa (float32: rtol=0.001, atol=0.0001)") and "DIVERGES" not in summary


def test_compare_names_the_first_divergence(pack, tmp_path, capsys):
    theirs = copy_case(pack, "gqa", tmp_path / "theirs")
    step = load_tensors(theirs / "decode_1.npz")
    names = list(step)
    for name in names[names.index("layers.1.mlp.up_proj"):]:  # a bug there, and everything after it
        step[name] = step[name] + np.float32(1e-2)
    save_tensors(theirs / "decode_1.npz", step)
    assert cli.main(["compare", str(pack / "gqa"), str(theirs)]) == 1
    out = capsys.readouterr().out
    assert "first divergence: layers.1.mlp.up_proj" in out
    assert out.strip().splitlines()[-1].endswith("decode_0 agrees, decode_1 DIVERGES, decode_2 agrees, batch agrees")
    # one file, the input named by its stem; looser float16 tolerances let 1e-2 through
    assert cli.main(["compare", str(pack / "gqa"), str(theirs / "decode_1.npz")]) == 1
    assert "first divergence: layers.1.mlp.up_proj" in capsys.readouterr().out
    assert cli.main(["compare", str(pack / "gqa"), str(theirs / "decode_1.npz"), "--dtype", "float16"]) == 0
    capsys.readouterr()


def test_compare_ignores_padding_only(pack, tmp_path, capsys):
    batch = load_tensors(pack / "mha" / "batch.safetensors")
    theirs = {k: v.copy() for k, v in batch.items() if k != "attention_mask"}
    theirs["layers.0.self_attn.probs"][1, :, :3] = 0.25  # pad queries: anything goes
    theirs["layers.1.output"][1, :3] += 5.0
    save_tensors(tmp_path / "batch.safetensors", theirs)
    assert cli.main(["compare", str(pack / "mha"), str(tmp_path / "batch.safetensors")]) == 0
    theirs["layers.1.output"][1, 3] += 5.0  # the first real token of the padded row
    save_tensors(tmp_path / "batch.safetensors", theirs)
    assert cli.main(["compare", str(pack / "mha"), str(tmp_path / "batch.safetensors")]) == 1
    assert "first divergence: layers.1.output" in capsys.readouterr().out


def test_compare_errors(pack, tmp_path, capsys):
    save_tensors(tmp_path / "mine.safetensors", load_tensors(pack / "mha" / "prefill.safetensors"))
    assert cli.main(["compare", str(pack / "mha"), str(tmp_path / "mine.safetensors")]) == 1
    assert "--input" in capsys.readouterr().err
    assert cli.main(["compare", str(pack / "mha"), str(tmp_path / "mine.safetensors"), "--input", "prefill"]) == 0
    (tmp_path / "empty").mkdir()
    assert cli.main(["compare", str(pack / "mha"), str(tmp_path / "empty")]) == 1
    assert "nothing compared" in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path / "empty"), str(tmp_path / "mine.safetensors")]) == 1
    assert "not a case of a conformance pack" in capsys.readouterr().err


# -- the pack against transformers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def transformers():
    return needs_transformers("checking the pack against transformers")[1]


def hidden_names(n_layers: int) -> list[str]:
    """The pack's names for transformers' hidden_states: the embedding, layers 0..L-2, then the final norm."""
    return ["embed_tokens"] + [f"layers.{i}.output" for i in range(n_layers - 1)] + ["norm"]


def run_hf(make_model, pack_case) -> dict[str, dict[str, np.ndarray]]:
    """transformers' logits, hidden states and attentions for every input of a case, named as the pack.

    The batch runs on a fresh model: transformers' dynamic-NTK rotary module keeps the frequencies of
    the longest sequence it has seen (11 after the decode steps), where the pack, like a fresh model,
    takes them from the call's own positions (10).
    """
    import torch

    results, cache = {}, None
    for name in INPUTS:
        if name in ("prefill", "batch"):
            model = make_model()
        given = load_tensors(pack_case / f"{name}.safetensors")
        kwargs = {k: torch.from_numpy(given[k].copy()) for k in ("input_ids", "attention_mask", "position_ids") if k in given}
        with torch.no_grad():
            out = model(**kwargs, past_key_values=None if name == "batch" else cache, use_cache=name != "batch",
                        output_hidden_states=True, output_attentions=True)
        if name != "batch":
            cache = out.past_key_values
        n_layers = len(out.attentions)
        got = {"logits": out.logits}
        got.update(zip(hidden_names(n_layers), out.hidden_states))
        got.update((f"layers.{i}.self_attn.probs", a) for i, a in enumerate(out.attentions))
        results[name] = {k: v.float().numpy() for k, v in got.items()}
    return results


def real(pack_tensors: dict, name: str, arr: np.ndarray) -> np.ndarray:
    """The values at real (non-pad) query positions: the token axis is 2 for probs, 1 elsewhere."""
    if "attention_mask" not in pack_tensors:
        return arr
    keep = pack_tensors["attention_mask"].astype(bool)
    return np.moveaxis(arr, 2, 1)[keep] if name.endswith("probs") else arr[keep]


def check_against(case: str, pack_case, produced: dict, label: str) -> dict[str, float]:
    """Max |Δ| of logits, hidden states and attentions over every input; asserts the tolerances."""
    worst = {"logits": 0.0, "hidden": 0.0, "attn": 0.0}
    for input_name, tensors in produced.items():
        ours = load_tensors(pack_case / f"{input_name}.safetensors")
        for name, arr in tensors.items():
            d = float(np.max(np.abs(real(ours, name, arr).astype(np.float64) - real(ours, name, ours[name]))))
            kind = "logits" if name == "logits" else "attn" if name.endswith("probs") else "hidden"
            tol = {"logits": TOL_LOGITS, "hidden": TOL_HIDDEN, "attn": TOL_ATTN}[kind]
            assert d <= tol, f"{case} / {input_name}: {label} {name} max |Δ| = {d:.3g} > {tol}"
            worst[kind] = max(worst[kind], d)
    for kind, d in worst.items():
        record_parity(case, f"max|Δ{kind}| {label}", d, table="conformance pack")
    return worst


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_pack_matches_transformers(pack, transformers, case):
    def make_model():
        return transformers.LlamaForCausalLM.from_pretrained(pack / case, dtype="float32",
                                                             attn_implementation="eager").eval()

    check_against(case, pack / case, run_hf(make_model, pack / case), "hf")


def test_open_llama_matches_hooked_transformers_llama(pack, transformers):
    """Open-Llama = Llama + LayerNorm after the embedding + the embedding as LM head: build that in transformers."""
    import torch

    from tinyllama_ref.formats.checkpoint import read_checkpoint_tensors

    cfg = json.loads((pack / "open_llama" / "config.json").read_text())
    config = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type",
                                         "use_stable_embedding", "shared_input_output_embedding", "torch_dtype")},
                                      tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM._from_config(config, attn_implementation="eager").eval()
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in read_checkpoint_tensors(pack / "open_llama").items()}
    norm_w, norm_b = tensors.pop("model.embed_layer_norm.weight"), tensors.pop("model.embed_layer_norm.bias")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # transformers 4.57's OpenLlamaModel: nn.LayerNorm(hidden_size) (eps 1e-5) on the embedding output
    model.model.embed_tokens.register_forward_hook(
        lambda module, args, output: torch.nn.functional.layer_norm(output, output.shape[-1:], norm_w, norm_b, 1e-5))
    check_against("open_llama", pack / "open_llama", run_hf(lambda: model, pack / "open_llama"), "hf")


# transformers 4.57 (the last with Open-Llama) in its own Python: the variable tools/make_golden.py reads
VENV457 = Path(os.environ.get("GOLDEN_OPENLLAMA_PYTHON", "/opt/venv457/bin/python"))
OPEN_LLAMA_457 = """
import sys, numpy as np, torch
from safetensors.numpy import load_file
from transformers.models.deprecated.open_llama import OpenLlamaForCausalLM
case, out = sys.argv[1], sys.argv[2]
model = OpenLlamaForCausalLM.from_pretrained(case).eval()
logits, seen = {}, []
with torch.no_grad():
    for name in ("prefill", "decode_0", "decode_1", "decode_2", "batch"):
        t = {k: torch.from_numpy(v) for k, v in load_file(f"{case}/{name}.safetensors").items()}
        if name == "batch":  # left-padded, with its mask and positions
            logits[name] = model(t["input_ids"], attention_mask=t["attention_mask"],
                                 position_ids=t["position_ids"]).logits.numpy()
        else:  # no cache here: the whole sequence so far, keeping the new positions' logits
            seen.append(t["input_ids"])
            ids = torch.cat(seen, dim=1)
            logits[name] = model(ids).logits[:, -t["input_ids"].shape[1]:].numpy()
np.savez(out, **logits)
"""


@pytest.mark.skipif(not VENV457.exists(), reason=f"needs a Python with transformers 4.57 (the last with Open-Llama) "
                                                 f"at {VENV457} or $GOLDEN_OPENLLAMA_PYTHON")
def test_open_llama_matches_transformers_4_57(pack, tmp_path):
    """The pack's Open-Llama case against transformers 4.57's own OpenLlamaForCausalLM: the prefill, the
    three decode steps (its logits for the whole sequence so far) and the left-padded batch."""
    out = tmp_path / "open_llama_457.npz"
    run = subprocess.run([str(VENV457), "-c", OPEN_LLAMA_457, str(pack / "open_llama"), str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, f"transformers 4.57 did not run: {run.stderr[-2000:]}"
    theirs = np.load(out)
    produced = {name: {"logits": theirs[name]} for name in INPUTS}
    worst = check_against("open_llama", pack / "open_llama", produced, "hf 4.57")
    assert worst["logits"] <= TOL_LOGITS


def test_open_llama_matches_our_plain_forward(pack):
    """The pack's traced Open-Llama run equals the un-instrumented forward (hidden states, logits, cached decode)."""
    model = tl.load(pack / "open_llama")
    produced, cache = {}, None
    for name in INPUTS:
        given = load_tensors(pack / "open_llama" / f"{name}.safetensors")
        kwargs = {k: given[k] for k in ("input_ids", "attention_mask", "position_ids") if k in given}
        out = model(**kwargs, past_key_values=None if name == "batch" else cache, use_cache=name != "batch",
                    output_hidden_states=True, output_attentions=True)
        if name != "batch":
            cache = out.past_key_values
        got = {"logits": out.logits, **dict(zip(hidden_names(len(out.attentions)), out.hidden_states))}
        got.update((f"layers.{i}.self_attn.probs", a) for i, a in enumerate(out.attentions))
        produced[name] = {k: to_numpy(v) for k, v in got.items()}
    worst = check_against("open_llama", pack / "open_llama", produced, "ours")
    assert worst["logits"] <= 1e-6


@pytest.mark.parametrize("case, dtype", [("float16", "float16"), ("bfloat16", "bfloat16")])
def test_native_dtype_tolerances_are_met_by_transformers(pack, transformers, case, dtype):
    """transformers computing in the checkpoint's own dtype passes `compare` at the manifest's tolerance."""
    import torch

    def make_model():
        return transformers.LlamaForCausalLM.from_pretrained(pack / case, dtype=getattr(torch, dtype),
                                                             attn_implementation="eager").eval()

    rtol, atol = TOLERANCES[dtype]["rtol"], TOLERANCES[dtype]["atol"]
    worst = {}
    for input_name, tensors in run_hf(make_model, pack / case).items():
        ours = load_tensors(pack / case / f"{input_name}.safetensors")
        for name, arr in tensors.items():
            a, b = real(ours, name, ours[name]), real(ours, name, arr)
            kind = "logits" if name == "logits" else "attn" if name.endswith("probs") else "hidden"
            worst[kind] = max(worst.get(kind, 0.0), float(np.max(np.abs(a - b))))
            assert np.all(np.abs(a - b) <= atol + rtol * np.abs(b)), \
                f"{case} / {input_name}: transformers in {dtype}, {name}: max |Δ| {np.max(np.abs(a - b)):.3g}"
    for kind, d in worst.items():
        record_parity(case, f"max|Δ{kind}| hf {dtype}", d, table="conformance pack")


def test_float16_tolerance_is_met_by_our_float16_compute(pack, tmp_path, capsys):
    """Every intermediate of our float16 compute passes `compare --dtype float16` against the pack."""
    model = tl.load(pack / "float16", dtype="float16")
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in INPUTS:
        given = load_tensors(pack / "float16" / f"{name}.safetensors")
        if name == "prefill":
            cache = tl.KVCache.allocate(model.config, 1, 11, like=model.params["model"]["embed_tokens"]["weight"])
        kwargs = {k: given[k] for k in ("input_ids", "attention_mask", "position_ids") if k in given}
        save_tensors(mine / f"{name}.safetensors",
                     trace_forward(model, **kwargs, past_key_values=None if name == "batch" else cache))
    assert cli.main(["compare", str(pack / "float16"), str(mine), "--dtype", "float16"]) == 0, capsys.readouterr().out
