"""The transfer budget of the CuPy path, counted on the CuPy double (tests/cupy_double.py).

One decode step of batch b moves the b new token ids up (one copy) and the last row of logits down
(one copy). Sampling stays on the host, from those logits, so the same seed picks the same tokens on
every backend. Nothing else crosses: ids are checked on the host before they go up, the attention mask,
the positions and the KV cache are allocated once and grown on the device, and the RoPE frequencies are
copied up once per model (per length bucket for dynamic NTK and LongRoPE). Prefill copies up the ids,
the mask and the positions, plus the frequencies on a model's first call, and copies one result down.

The one exception, documented: Dynamic NTK and LongRoPE pick their frequencies by the furthest
position, so when positions are given as device arrays (as generation's are) each step reads that
one integer back.
"""
import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref import backend as B
from tinyllama_ref.generation import SamplingParams, generate_ids
from tinyllama_ref.rope_scaling import RopeTables, rope_inv_freq
from tinyllama_ref.formats.checkpoint import random_tensors

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)
ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": 16, "factor": 4.0,
                 "short_factor": [1.0, 1.5, 2.0, 3.0], "long_factor": [2.0, 3.0, 5.0, 8.0]},
}
PROMPTS = {1: [[3, 14, 15, 92, 65, 35, 8, 9]], 3: [[3, 14, 15, 92, 65, 35, 8, 9], [2, 7], [18, 28, 1, 82, 8]]}
NEW_TOKENS = 12  # the longest prompt (8) + 12 crosses LongRoPE's original 16 positions mid-way


def config_for(rope: str) -> tl.LlamaConfig:
    return tl.LlamaConfig(**BASE, rope_scaling=ROPES[rope])


def counted_steps(model, prompts, sp, transfers):
    """Per yielded token (the prefill's first, then one per decode step): copies and bytes each way, and
    how many RoPE buckets the model holds by then."""
    rows = []
    transfers.reset()
    for _ in generate_ids(model, prompts, sp):
        rows.append(dict(up=transfers.to_device, down=transfers.to_host, bytes_up=transfers.bytes_to_device,
                         bytes_down=transfers.bytes_to_host, buckets=len(model.rope.buckets),
                         log=transfers.report()))
        transfers.reset()
    return rows


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("rope", list(ROPES))
def test_a_decode_step_moves_the_new_ids_up_and_one_row_of_logits_down(double, rope, batch, dtype):
    config = config_for(rope)
    model = tl.build_model(config, random_tensors(config, std=0.3), backend="cupy", dtype=dtype)
    sp = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2,
                        seed=0)
    prefill, *decode = counted_steps(model, PROMPTS[batch], sp, double.transfers)
    row_bytes = batch * config.vocab_size * np.dtype(dtype).itemsize  # the last position's logits
    reads_position = model.rope.length_dependent  # the documented exception: one int64 read back per step

    assert prefill["up"] == 3 + 1, prefill["log"]  # ids, mask, positions; the RoPE frequencies (first call)
    assert (prefill["down"], prefill["bytes_down"]) == (1, row_bytes), prefill["log"]
    assert len(decode) == NEW_TOKENS - 1
    buckets = prefill["buckets"]
    for step in decode:
        new_buckets, buckets = step["buckets"] - buckets, step["buckets"]
        assert step["up"] == 1 + new_buckets, step["log"]  # the b new ids (and a new bucket's frequencies)
        assert step["bytes_up"] - 4 * config.head_dim // 2 * new_buckets == batch * 8, step["log"]
        assert step["down"] == 1 + reads_position, step["log"]
        assert step["bytes_down"] == row_bytes + 8 * reads_position, step["log"]
    if rope == "longrope":
        assert buckets == 2  # generation crossed the original context: the long factors went up once


def test_the_model_checks_host_ids_without_reading_the_device(double):
    config = config_for("default")
    model = tl.build_model(config, random_tensors(config, std=0.3), backend="cupy")
    model([[1, 2, 3]])
    double.transfers.reset()
    out = model(np.array([[4, 5, 6]]))  # host ids: checked on the host, one copy up, nothing down
    assert B.is_cupy_array(out.logits)
    assert (double.transfers.to_device, double.transfers.to_host) == (1, 0), double.transfers.report()
    with pytest.raises(tl.InputError, match=r"token id 96 at position \(0, 1\)"):
        model([[4, 96]])
    assert double.transfers.to_host == 0, double.transfers.report()


def test_ids_already_on_the_device_cost_one_sync_to_check(double):
    config = config_for("default")
    model = tl.build_model(config, random_tensors(config, std=0.3), backend="cupy")
    model([[1, 2, 3]])
    ids = double.asarray([[7, 8]])
    double.transfers.reset()
    model(ids)
    assert (double.transfers.to_device, double.transfers.to_host) == (0, 1), double.transfers.report()
    with pytest.raises(tl.InputError, match=r"token id -3 at position \(1, 0\)"):
        model(double.asarray([[7, 8], [-3, 1]]))


def test_positions_known_on_the_host_cost_no_sync_even_for_dynamic_ntk(double):
    config = config_for("dynamic")
    model = tl.build_model(config, random_tensors(config, std=0.3), backend="cupy")
    out = model([[1, 2, 3]], position_ids=[[0, 1, 2]], use_cache=True)
    double.transfers.reset()
    model([[4]], past_key_values=out.past_key_values, use_cache=True)  # default positions: past + arange
    model([[5]], position_ids=np.array([[4]]), past_key_values=out.past_key_values, use_cache=True)
    assert double.transfers.to_host == 0, double.transfers.report()


@pytest.mark.parametrize("rope", list(ROPES))
def test_rope_tables_equal_rope_inv_freq_in_every_bucket(rope):
    config = config_for(rope)
    tables = RopeTables(config)
    for seq_len in [None, 1, 15, 16, 17, 63, 64, 65, 100, 64, 17, 3]:  # back and forth across the boundaries
        inv_freq, factor = tables(seq_len)
        want, want_factor = rope_inv_freq(config, seq_len)
        assert np.array_equal(inv_freq, want) and factor == want_factor, (rope, seq_len)
    assert len(tables.buckets) == {"dynamic": 3, "longrope": 2}.get(rope, 1)
