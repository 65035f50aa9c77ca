"""Live parity with transformers on random configs (needs torch and transformers 5.x).

Hypothesis draws a small Llama config (heads, kv heads dividing them, head_dim, layers, vocab,
any of the six RoPE types with its parameters, tied head, biases) and a batch (1-3 rows, 1-24
tokens, left padding, with or without generate-style position_ids). transformers builds the model
(CPU, float32, eager attention), save_pretrained writes it to a temporary directory, `tl.load`
reads it back, and the logits must agree to 1e-4 at every non-pad position.

    python -m pytest tests/test_parity_live.py -m live -s

Open-Llama is not drawn here: it needs transformers 4.57 (a separate venv), so the committed
Open-Llama goldens in tests/fixtures/golden/ are its check.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

torch = pytest.importorskip("torch", reason="live parity needs torch (CPU build: pip install torch==2.13.0 "
                                            "--index-url https://download.pytorch.org/whl/cpu)")
transformers = pytest.importorskip("transformers", reason="live parity needs transformers 5.x")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip(f"live parity compares with transformers 5.x; found {transformers.__version__}",
                allow_module_level=True)

import tinyllama_ref as tl  # noqa: E402
from conftest import record_parity  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_golden import randomize_weights_  # noqa: E402  (the same weight draw as the goldens)

pytestmark = [pytest.mark.live, pytest.mark.slow]
torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

TOL_LOGITS = 1e-4  # max |Δlogits|, float32
LIVE_SETTINGS = settings(max_examples=45, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def rope_parameters(draw, head_dim: int):
    """(rope_parameters, max_position_embeddings) for one of the six rope types, as transformers 5.x spells them."""
    rope_type = draw(st.sampled_from(["default", "linear", "dynamic", "yarn", "longrope", "llama3"]))
    theta = draw(st.sampled_from([10000.0, 500000.0, 100.0]))
    p = {"rope_type": rope_type, "rope_theta": theta}
    max_pos = draw(st.sampled_from([8, 16, 32, 64]))
    factors = st.floats(1.0, 8.0, allow_nan=False).map(lambda x: round(x, 3))
    if rope_type in ("linear", "dynamic"):  # dynamic kicks in once the sequence is longer than max_pos
        p["factor"] = draw(factors)
    elif rope_type == "yarn":
        original = draw(st.sampled_from([8, 64, 512, 4096]))
        p.update(factor=draw(factors), original_max_position_embeddings=original)
        max_pos = int(original * p["factor"])
        if draw(st.booleans()):
            p.update(beta_fast=draw(st.sampled_from([8.0, 16.0, 32.0])), beta_slow=draw(st.sampled_from([1.0, 2.0])))
        if draw(st.booleans()):
            p.update(mscale=draw(st.sampled_from([0.5, 1.0])), mscale_all_dim=draw(st.sampled_from([0.5, 1.0])))
        if draw(st.booleans()):
            p["attention_factor"] = draw(st.sampled_from([0.8, 1.0, 1.3]))
        if draw(st.booleans()):
            p["truncate"] = draw(st.booleans())
    elif rope_type == "longrope":
        original = draw(st.sampled_from([4, 8, 16, 32]))  # sequences up to 24 cross the short/long switch
        lists = st.lists(factors, min_size=head_dim // 2, max_size=head_dim // 2)
        p.update(short_factor=draw(lists), long_factor=draw(lists), original_max_position_embeddings=original)
        max_pos = original * draw(st.sampled_from([1, 2, 4]))
        if draw(st.booleans()):
            p["factor"] = draw(factors)
        if draw(st.booleans()):
            p["attention_factor"] = draw(st.sampled_from([0.9, 1.0, 1.2]))
    elif rope_type == "llama3":
        original = draw(st.sampled_from([8, 32, 128]))
        low = draw(st.sampled_from([1.0, 2.0]))
        p.update(factor=draw(factors), low_freq_factor=low, high_freq_factor=low + draw(st.sampled_from([1.0, 3.0])),
                 original_max_position_embeddings=original)
        max_pos = original * 4
    return p, max_pos


@st.composite
def llama_configs(draw):
    """Keyword arguments for a small transformers LlamaConfig."""
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([4, 8, 16]))
    hidden = heads * draw(st.sampled_from([2, 4, 8]))  # 5.x requires hidden % heads == 0; head_dim may differ
    rope, max_pos = draw(rope_parameters(head_dim))
    return dict(vocab_size=draw(st.integers(16, 64)), hidden_size=hidden,
                intermediate_size=draw(st.sampled_from([16, 24, 40])), num_hidden_layers=draw(st.integers(1, 2)),
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                max_position_embeddings=max_pos, rms_norm_eps=draw(st.sampled_from([1e-6, 1e-5])),
                tie_word_embeddings=draw(st.booleans()), attention_bias=draw(st.booleans()),
                mlp_bias=draw(st.booleans()), rope_parameters=rope)


@st.composite
def batches(draw, vocab_size: int, pad_token_id: int = 0):
    """(input_ids, attention_mask or None, position_ids or None) with left padding."""
    batch, seq = draw(st.integers(1, 3)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = rng.integers(1, vocab_size, size=(batch, seq)).astype(np.int64)
    pads = draw(st.lists(st.integers(0, seq - 1), min_size=batch, max_size=batch))
    if not any(pads) and not draw(st.booleans()):
        return ids, None, None
    mask = np.ones((batch, seq), dtype=np.int64)
    for row, amount in enumerate(pads):
        mask[row, :amount] = 0
    ids[mask == 0] = pad_token_id
    positions = None
    if draw(st.booleans()):  # what generate() passes; otherwise transformers uses arange(seq) for every row
        positions = np.cumsum(mask, axis=-1) - 1
        positions[mask == 0] = 1
    return ids, mask, positions


def build_and_save(head_cls, config_kwargs: dict, seed: int, path: Path):
    config = transformers.LlamaConfig(**config_kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = head_cls(config).eval()
    randomize_weights_(model, seed)
    model.save_pretrained(path, safe_serialization=True)
    return model


def hf_logits(model, ids, mask, positions):
    kwargs = {"input_ids": torch.from_numpy(ids)}
    if mask is not None:
        kwargs["attention_mask"] = torch.from_numpy(mask)
    if positions is not None:
        kwargs["position_ids"] = torch.from_numpy(positions)
    with torch.no_grad():
        return model(**kwargs, use_cache=False).logits.numpy()


@LIVE_SETTINGS
@given(data=st.data())
def test_live_causal_lm(data):
    config_kwargs = data.draw(llama_configs(), label="config")
    ids, mask, positions = data.draw(batches(config_kwargs["vocab_size"]), label="batch")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_and_save(transformers.LlamaForCausalLM, config_kwargs, seed, Path(tmp))
        want = hf_logits(hf, ids, mask, positions)
        got = np.asarray(tl.load(tmp)(ids, attention_mask=mask, position_ids=positions).logits)
    real = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)  # pad positions are arbitrary in HF
    d = float(np.abs(got[real] - want[real]).max())
    rope_type = config_kwargs["rope_parameters"]["rope_type"]
    record_parity(f"rope {rope_type}", "max|Δlogits|", d, table="live parity (worst per rope type)")
    assert d <= TOL_LOGITS, f"max |Δlogits| = {d:.3g} for config {config_kwargs}, batch {ids.shape}, " \
                            f"mask {mask is not None}, position_ids {positions is not None}"


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_live_sequence_classification(data):
    config_kwargs = data.draw(llama_configs(), label="config")
    num_labels = data.draw(st.sampled_from([1, 2, 3]), label="num_labels")
    config_kwargs.update(num_labels=num_labels, pad_token_id=0)
    ids, mask, positions = data.draw(batches(config_kwargs["vocab_size"]), label="batch")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_and_save(transformers.LlamaForSequenceClassification, config_kwargs, seed, Path(tmp))
        want = hf_logits(hf, ids, mask, positions)  # [batch, num_labels], pooled at the last non-pad token
        got = np.asarray(tl.load(tmp)(ids, attention_mask=mask, position_ids=positions).logits)
    assert got.shape == want.shape
    d = float(np.abs(got - want).max())
    record_parity("sequence classification", "max|Δlogits|", d, table="live parity (worst per rope type)")
    assert d <= TOL_LOGITS, f"max |Δlogits| = {d:.3g} for config {config_kwargs}"


@pytest.mark.parametrize("hidden_act", ["silu", "swish", "relu", "gelu", "gelu_new", "gelu_pytorch_tanh"])
def test_live_every_activation(hidden_act):
    """`llama.py` calls SiLU itself; any other `hidden_act` runs through `instrumented.decoder_layer`."""
    config_kwargs = dict(vocab_size=48, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         hidden_act=hidden_act)
    ids = np.random.default_rng(1).integers(0, 48, (2, 12))
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_and_save(transformers.LlamaForCausalLM, config_kwargs, 7, Path(tmp))
        want = hf_logits(hf, ids, None, None)
        got = np.asarray(tl.load(tmp)(ids).logits)
    d = float(np.abs(got - want).max())
    record_parity(f"hidden_act {hidden_act}", "max|Δlogits|", d, table="live parity (worst per rope type)")
    assert d <= TOL_LOGITS, f"max |Δlogits| = {d:.3g} with hidden_act={hidden_act}"
