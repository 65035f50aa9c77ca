"""`Model.save_pretrained` and `Model.resize_token_embeddings`, checked against transformers 5.x.

Saving: transformers' `from_pretrained` reads what we write and gives the same logits (exactly),
`tl.load` reads it back bit for bit, shard names and the index are those transformers writes for
the same `max_shard_size`, a float16/bfloat16 checkpoint stays in its dtype, and a failed save
leaves the target as it was. Resizing: new rows drawn as transformers draws them (a random draw,
so its statistics are compared), old rows unchanged, and a batch padded with an added pad token
classifies and generates as transformers does after the same resize.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllama_ref as tl
from conftest import needs_transformers, record_parity
from tinyllama_ref import atomic
from tinyllama_ref.formats import hf_writer
from tinyllama_ref.formats import safetensors as st
from tinyllama_ref.formats.checkpoint import flatten, random_tensors
from tinyllama_ref.generation import SamplingParams, generate_ids

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

TOL_PADDED = 1e-5  # max |Δlogits| after adding a pad token and resizing in both (float32, eager attention)
PAD = 64  # the added pad token: one past the tiny vocabulary
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64)


def hf_model(head: str = "LlamaForCausalLM", dtype=None, **config):
    """A tiny transformers model (eager attention, weights redrawn as the goldens draw them)."""
    torch, transformers = needs_transformers()
    from make_golden import randomize_weights_

    cfg = transformers.LlamaConfig(**{**TINY, **config})
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, head)(cfg).eval()
    randomize_weights_(model, 0)
    return model.to(dtype) if dtype is not None else model


def hf_from(path, head: str = "AutoModelForCausalLM", **kwargs):
    _, transformers = needs_transformers()
    return getattr(transformers, head).from_pretrained(path, attn_implementation="eager", **kwargs).eval()


def hf_out(model, ids, mask=None):
    torch, _ = needs_transformers()
    with torch.no_grad():
        out = model(torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask))
    x = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return x.float().numpy()


def ours_out(model, ids, mask=None):
    out = model(ids, attention_mask=mask)
    return np.asarray(out.logits if out.logits is not None else out.extras["last_hidden_state"])


def same_params(a: tl.Model, b: tl.Model) -> bool:
    fa, fb = flatten(a.params), flatten(b.params)
    return fa.keys() == fb.keys() and all(np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype
                                          and np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


IDS = np.random.default_rng(0).integers(0, 64, (2, 9))


# -- saving ------------------------------------------------------------------------------------

SAVE_CASES = {  # name: (transformers class to build, to read ours back, config overrides, save kwargs)
    "mha": ("LlamaForCausalLM", "AutoModelForCausalLM", {}, {}),
    "gqa_tied": ("LlamaForCausalLM", "AutoModelForCausalLM", {"num_key_value_heads": 2, "tie_word_embeddings": True},
                 {}),
    "sharded": ("LlamaForCausalLM", "AutoModelForCausalLM", {"num_key_value_heads": 2, "attention_bias": True},
                {"max_shard_size": "20KB"}),
    "classifier": ("LlamaForSequenceClassification", "AutoModelForSequenceClassification",
                   {"num_labels": 3, "pad_token_id": 0}, {}),
    "base": ("LlamaModel", "AutoModel", {}, {}),
}


@pytest.mark.parametrize("case", SAVE_CASES)
def test_saved_directory_loads_in_transformers_and_back(case, tmp_path):
    build, read, config, save_kwargs = SAVE_CASES[case]
    hf = hf_model(build, **config)
    hf.save_pretrained(tmp_path / "theirs", **save_kwargs)
    ours = tl.load(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours", **save_kwargs)

    back = hf_from(tmp_path / "ours", read)
    d = float(np.abs(hf_out(back, IDS) - hf_out(hf, IDS)).max())
    record_parity(f"save_pretrained {case}", "max|Δlogits|", d, table="save and resize")
    assert d == 0.0, f"transformers reads our {case} save with max |Δ| = {d:.3g} (the same weights: expected 0)"
    assert same_params(tl.load(tmp_path / "ours"), ours)  # bit for bit, names and dtypes too

    files = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "theirs").iterdir())  # shard names, index, generation config
    index = tmp_path / "ours" / hf_writer.INDEX_NAME
    if index.exists():
        assert json.loads(index.read_text()) == json.loads((tmp_path / "theirs" / hf_writer.INDEX_NAME).read_text())
        assert len(files) > 4  # several shards
    names = {n for f in files if f.endswith(".safetensors") for n in st.read_safetensors(tmp_path / "ours" / f)}
    theirs = {n for f in files if f.endswith(".safetensors") for n in st.read_safetensors(tmp_path / "theirs" / f)}
    assert names == theirs  # transformers' names; a tied head saved once


def test_config_json_round_trips_and_reads_as_transformers_config(tmp_path):
    _, transformers = needs_transformers()
    config = tl.LlamaConfig(**TINY, num_key_value_heads=2, rope_theta=5e5, pad_token_id=3, eos_token_id=[2, 5],
                            rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32})
    tl.build_model(config, random_tensors(config)).save_pretrained(tmp_path)
    back = tl.LlamaConfig.from_json(tmp_path / "config.json")
    assert back == dataclasses.replace(config, torch_dtype="float32")
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert hf.rope_parameters == config.rope_parameters and str(hf.dtype) == "torch.float32"
    assert (hf.pad_token_id, hf.eos_token_id, hf.num_key_value_heads) == (3, [2, 5], 2)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_checkpoint_is_saved_in_its_dtype(dtype, tmp_path):
    torch, _ = needs_transformers()
    from safetensors.torch import load_file

    hf = hf_model(dtype=getattr(torch, dtype), num_key_value_heads=2)
    hf.save_pretrained(tmp_path / "theirs")
    ours = tl.load(tmp_path / "theirs")  # held as float32
    ours.save_pretrained(tmp_path / "ours")
    a, b = load_file(tmp_path / "ours" / "model.safetensors"), load_file(tmp_path / "theirs" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["dtype"] == dtype
    half = tl.load(tmp_path / "theirs", dtype="float16") if dtype == "float16" else None
    if half is not None:  # held as float16: saved as float16, read back the same
        half.save_pretrained(tmp_path / "half")
        assert same_params(tl.load(tmp_path / "half", dtype="float16"), half)


def test_open_llama_round_trips(tmp_path):
    config = tl.LlamaConfig.from_dict({**TINY, "model_type": "open-llama"})  # stable embedding, shared head
    model = tl.build_model(config, random_tensors(config, seed=3))
    model.save_pretrained(tmp_path)
    back = tl.load(tmp_path)
    assert same_params(back, model) and back.config == dataclasses.replace(config, torch_dtype="float32")
    assert "lm_head.weight" not in st.read_safetensors(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(ours_out(back, IDS), ours_out(model, IDS))


def test_saving_into_an_existing_directory_keeps_other_files_and_drops_stale_weights(tmp_path):
    config = tl.LlamaConfig(**TINY)
    model = tl.build_model(config, random_tensors(config))
    model.generation_config = {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 7}
    model.save_pretrained(tmp_path, max_shard_size=30_000)
    assert (tmp_path / hf_writer.INDEX_NAME).exists()
    (tmp_path / "tokenizer.model").write_bytes(b"not ours")
    model.save_pretrained(tmp_path)  # one file now: the shards and their index go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json",
                                                          "model.safetensors", "tokenizer.model"]
    back = tl.load(tmp_path)
    assert same_params(back, model) and back.generation_config == model.generation_config
    model.save_pretrained(tmp_path, max_shard_size="30KB")  # and back: model.safetensors goes
    assert not (tmp_path / "model.safetensors").exists() and same_params(tl.load(tmp_path), model)


def test_a_failed_save_leaves_the_target_as_it_was(tmp_path, monkeypatch):
    config = tl.LlamaConfig(**TINY)
    model = tl.build_model(config, random_tensors(config))
    calls = []

    def disk_full_at_the_second_file(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full_at_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path / "new", max_shard_size="30KB")
    assert list(tmp_path.iterdir()) == []  # no half directory, no staging left behind

    monkeypatch.undo()
    model.save_pretrained(tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    calls.clear()
    monkeypatch.setattr(atomic.os, "fsync", disk_full_at_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path / "old", max_shard_size="30KB")
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_save_refuses_a_quantized_model_clearly(tmp_path):
    model = tl.build_model(tl.LlamaConfig(**TINY), random_tensors(tl.LlamaConfig(**TINY), seed=0), quantize="int8")
    with pytest.raises(ValueError, match="holds int8 weights .* load it without quantize="):
        model.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_save_refuses_what_it_cannot_write(tmp_path):
    config = tl.LlamaConfig(**TINY)
    model = tl.build_model(config, random_tensors(config))
    with pytest.raises(ValueError, match="unit 'IB' not supported"):
        model.save_pretrained(tmp_path / "a", max_shard_size="5GiB")
    with pytest.raises(ValueError, match="safe_serialization=False"):
        model.save_pretrained(tmp_path / "a", safe_serialization=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        model.save_pretrained(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_size_parsing_and_sharding_are_huggingface_hub_s():
    hub = pytest.importorskip("huggingface_hub.serialization._base", reason="compares with huggingface_hub")
    for size in ("5GB", "200MB", " 1.5kb ", "50GB", "3TB", "0.5MB"):
        assert hf_writer.parse_size_to_int(size) == hub.parse_size_to_int(size)
    rng = np.random.default_rng(1)
    for _ in range(20):
        sizes = {f"t{i}": int(s) for i, s in enumerate(rng.integers(1, 50, rng.integers(1, 12)))}
        limit = int(rng.integers(10, 80))
        split = hub.split_state_dict_into_shards_factory(sizes, get_storage_size=lambda n: n, max_shard_size=limit,
                                                         filename_pattern="model{suffix}.safetensors")
        assert hf_writer.shard_files(sizes, limit) == split.filename_to_tensors


# -- resizing ----------------------------------------------------------------------------------

def test_new_rows_are_drawn_from_the_old_rows_mean_and_scaled_covariance():
    """transformers and ours, on the same matrix: new rows ~ N(mu, 1e-9 Sigma), old rows untouched."""
    torch, _ = needs_transformers()
    hf = hf_model(hidden_size=8, num_attention_heads=2)
    config = tl.LlamaConfig(**{**TINY, "hidden_size": 8, "num_attention_heads": 2})
    ours = tl.build_model(config, {k: v.numpy() for k, v in hf.state_dict().items()})
    old_embed = np.array(ours.params["model"]["embed_tokens"]["weight"])
    old_head = np.array(ours.params["lm_head"]["weight"])
    before = ours_out(ours, IDS)
    n = 4000
    torch.manual_seed(0)
    hf.resize_token_embeddings(64 + n)
    ours.resize_token_embeddings(64 + n, seed=0)
    for name, old in (("model.embed_tokens.weight", old_embed), ("lm_head.weight", old_head)):
        theirs = hf.state_dict()[name].numpy()
        mine = np.asarray(flatten(ours.params)[name])
        assert mine.shape == theirs.shape == (64 + n, 8) and mine.dtype == theirs.dtype
        np.testing.assert_array_equal(mine[:64], old)
        mu = old.astype(np.float64).mean(0)  # float64 sums: float32 ones of 4000 rows err by ~1 standard error
        cov = 1e-9 * (old - mu).T @ (old - mu) / 64
        for rows in (theirs[64:], mine[64:]):  # the same statistics, within the sampling error of n draws
            err = np.abs(rows.astype(np.float64).mean(0) - mu) / np.sqrt(np.diag(cov) / n)
            assert err.max() < 5, f"{name}: new rows' mean is {err.max():.1f} standard errors from the old mean"
            sample_cov = np.cov(rows.T.astype(np.float64))
            rel = np.linalg.norm(sample_cov - cov) / np.linalg.norm(cov)
            assert rel < 0.15, f"{name}: new rows' covariance is {rel:.2f} (relative) from 1e-9 Sigma"
    after = ours_out(ours, IDS)
    np.testing.assert_allclose(after[..., :64], before, rtol=0, atol=1e-6)  # old tokens' logits unchanged
    assert ours.config.vocab_size == 64 + n


def test_resize_without_mean_tied_head_shrink_and_pad_to_multiple_of():
    config = tl.LlamaConfig(**TINY, tie_word_embeddings=True, initializer_range=0.05)
    model = tl.build_model(config, random_tensors(config))
    old, count = np.array(model.params["model"]["embed_tokens"]["weight"]), model.num_parameters()
    e = model.resize_token_embeddings(3000, mean_resizing=False, seed=1)
    assert model.params["lm_head"]["weight"] is e  # tied: still one array
    assert e.shape == (3000, 32) and model.config.vocab_size == 3000
    assert model.num_parameters() == count + (3000 - 64) * 32  # the head's rows are the embedding's
    np.testing.assert_array_equal(e[:64], old)
    assert abs(e[64:].std() - 0.05) < 0.002 and abs(e[64:].mean()) < 0.002  # N(0, initializer_range)
    again = tl.build_model(config, random_tensors(config))
    np.testing.assert_array_equal(again.resize_token_embeddings(3000, mean_resizing=False, seed=1), e)  # seeded
    assert model.resize_token_embeddings(None, pad_to_multiple_of=128).shape == (3072, 32)
    assert model.resize_token_embeddings(None) is model.params["model"]["embed_tokens"]["weight"]
    cut = model.resize_token_embeddings(40)
    np.testing.assert_array_equal(cut, old[:40])
    assert model.params["lm_head"]["weight"] is cut and ours_out(model, IDS % 40).shape == (2, 9, 40)


def test_too_few_rows_for_a_covariance_give_the_mean_as_transformers():
    torch, _ = needs_transformers()
    hf = hf_model(vocab_size=6)  # 6 rows in 32 dimensions: Sigma is singular
    config = tl.LlamaConfig(**{**TINY, "vocab_size": 6})
    ours = tl.build_model(config, {k: v.numpy() for k, v in hf.state_dict().items()})
    hf.resize_token_embeddings(9)
    ours.resize_token_embeddings(9, seed=0)
    mine, theirs = np.asarray(ours.params["model"]["embed_tokens"]["weight"]), hf.model.embed_tokens.weight
    np.testing.assert_allclose(mine[6:], theirs.detach().numpy()[6:], rtol=0, atol=1e-7)
    np.testing.assert_allclose(mine[6:], np.broadcast_to(mine[:6].mean(0), (3, 32)), rtol=0, atol=1e-7)


def test_a_bfloat16_checkpoint_gets_bfloat16_rows():
    config = tl.LlamaConfig(**TINY, torch_dtype="bfloat16")
    model = tl.build_model(config, {k: st.bf16_to_f32(st.f32_to_bf16(v)) for k, v in random_tensors(config).items()})
    e = model.resize_token_embeddings(80, seed=0)
    np.testing.assert_array_equal(st.bf16_to_f32(st.f32_to_bf16(e)), e)  # saving it is exact


def test_resize_refuses_bad_arguments():
    config = tl.LlamaConfig(**TINY, pad_token_id=50)
    model = tl.build_model(config, random_tensors(config))
    with pytest.raises(tl.InputError, match="config.pad_token_id = 50"):
        model.resize_token_embeddings(40)
    with pytest.raises(tl.InputError, match="pad_to_multiple_of must be a positive integer"):
        model.resize_token_embeddings(70, pad_to_multiple_of=8.0)
    with pytest.raises(tl.InputError, match="new_num_tokens must be a positive integer"):
        model.resize_token_embeddings(0)
    assert model.config.vocab_size == 64 and model.params["model"]["embed_tokens"]["weight"].shape == (64, 32)


def test_resize_and_save_on_every_backend(backend, tmp_path):
    config = tl.LlamaConfig(**TINY, num_key_value_heads=2)
    model = backend.build(config, random_tensors(config))
    model.resize_token_embeddings(70, pad_to_multiple_of=8, seed=0)
    model.save_pretrained(tmp_path)
    back = tl.load(tmp_path)
    host = tl.build_model(config, random_tensors(config))
    host.resize_token_embeddings(70, pad_to_multiple_of=8, seed=0)
    assert same_params(back, host)


# -- a padded batch after adding a pad token ---------------------------------------------------

def resized_pair(head: str, tmp_path, **config):
    """transformers and ours after the Llama-2 recipe: one pad token added (id 64), the vocabulary
    resized (transformers' default mean draw), config.pad_token_id set. Ours resizes with
    mean_resizing=False, then takes transformers' new rows so that outputs can be compared."""
    torch, _ = needs_transformers()
    hf = hf_model(head, num_key_value_heads=2, **config)
    hf.save_pretrained(tmp_path)
    ours = tl.load(tmp_path)
    torch.manual_seed(1)
    hf.resize_token_embeddings(PAD + 1, pad_to_multiple_of=8)
    hf.config.pad_token_id = PAD
    old = {k: np.array(v) for k, v in flatten(ours.params).items()}
    ours.resize_token_embeddings(PAD + 1, pad_to_multiple_of=8, mean_resizing=False, seed=0)
    ours.config.pad_token_id = PAD
    take_new_rows(ours, hf, old)
    return hf, ours


def take_new_rows(ours: tl.Model, hf, old: dict) -> None:
    """After both resized: every tensor has transformers' shape, the old rows are ours from before (`old`,
    by name) and transformers' bit for bit, and our new embedding/head rows become transformers' (its draw
    is random) so that outputs can be compared."""
    theirs = hf.state_dict()
    for name, arr in flatten(ours.params).items():
        want, n = theirs[name].numpy(), old[name].shape[0]
        assert arr.shape == want.shape, name
        np.testing.assert_array_equal(arr[:n], old[name])  # old rows bit for bit
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            np.testing.assert_array_equal(arr[:n], want[:n])
            arr[n:] = want[n:]


def padded(ids: np.ndarray, side: str, lengths) -> tuple[np.ndarray, np.ndarray]:
    ids = ids.copy()
    for row, n in enumerate(lengths):
        if side == "right":
            ids[row, n:] = PAD
        else:
            ids[row, :ids.shape[1] - n] = PAD
    return ids, (ids != PAD).astype(np.int64)


def test_a_padded_batch_gives_transformers_logits_and_greedy_tokens(tmp_path):
    hf, ours = resized_pair("LlamaForCausalLM", tmp_path)
    assert ours.config.vocab_size == hf.config.vocab_size == 72
    ids = np.random.default_rng(2).integers(0, 64, (3, 10))
    for side in ("right", "left"):
        x, mask = padded(ids, side, [10, 6, 3])
        d = float(np.abs(ours_out(ours, x, mask) - hf_out(hf, x, mask))[mask.astype(bool)].max())
        record_parity(f"pad token, {side} padding", "max|Δlogits|", d, table="save and resize")
        assert d <= TOL_PADDED, f"{side} padding: max |Δlogits| = {d:.3g}"

    torch, _ = needs_transformers()
    prompts = [[1, 5, 9, 33, 7], [1, 7], [1, 2, 3, 4, 5, 6, 8]]
    x, mask = padded(np.array([[0] * (7 - len(p)) + p for p in prompts]), "left", [len(p) for p in prompts])
    with torch.no_grad():
        want = hf.generate(torch.from_numpy(x), attention_mask=torch.from_numpy(mask), max_new_tokens=12,
                           do_sample=False, pad_token_id=PAD, eos_token_id=2)[:, x.shape[1]:].numpy()
    got = np.stack(list(generate_ids(ours, prompts, SamplingParams(max_new_tokens=12), eos_ids=[2], pad_id=PAD)), 1)
    np.testing.assert_array_equal(np.where(got < 0, PAD, got), want)  # after EOS transformers writes the pad id


def test_a_padded_batch_classifies_as_transformers_with_either_padding_side(tmp_path):
    hf, ours = resized_pair("LlamaForSequenceClassification", tmp_path, num_labels=3)
    ids = np.random.default_rng(3).integers(0, 64, (4, 9))
    for side in ("right", "left"):
        x, mask = padded(ids, side, [9, 5, 2, 7])
        d = float(np.abs(ours_out(ours, x, mask) - hf_out(hf, x, mask)).max())
        record_parity(f"classifier, {side} padding", "max|Δlogits|", d, table="save and resize")
        assert d <= TOL_PADDED, f"{side} padding: max |Δlogits| = {d:.3g}"
