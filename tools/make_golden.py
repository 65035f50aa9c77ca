"""Build tiny random Hugging Face checkpoints and record their golden outputs.

Every case is a real checkpoint written by `transformers.save_pretrained` (config.json +
safetensors) into tests/fixtures/golden/<case>/, next to:

    golden.npz   the inputs (input_ids, attention_mask, position_ids, labels; where the case
                 has them) and transformers' outputs: logits, hidden_states (stacked:
                 [num_layers+1, batch, seq, hidden]), attentions (stacked: [num_layers, batch,
                 heads, seq, seq]; a few cases only), loss, and for fp16/bf16 checkpoints also
                 logits_native (transformers computing in the checkpoint's own dtype).
    meta.json    the case description, the transformers and torch versions, what was recorded.

Llama cases use transformers 5.x (this python). Open-Llama was removed in 5.x, so its cases
re-run this same script under the 4.57 venv (/opt/venv457, or $GOLDEN_OPENLLAMA_PYTHON).

    python3 tools/make_golden.py                 # regenerate every case
    python3 tools/make_golden.py --case rope_yarn --case tied_head
    python3 tools/make_golden.py --list          # the case names and what each one tests

Goldens are computed from the checkpoint as reloaded from disk (float32, eager attention), and
the script checks that the reloaded model reproduces the in-memory one, so a config.json field
that fails to round-trip is caught here. Random init with std 0.02 makes nearly uniform logits
that hide bugs, so every weight is redrawn (matrices std 0.2, embeddings 0.5, norm weights
1 + 0.1 noise, biases 0.1 noise). Seeds come from the case name, so adding a case never
changes another one and re-running rewrites identical files.

Needs torch (CPU build) and transformers; the package itself never imports this file.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / "tests" / "fixtures" / "golden"
OPENLLAMA_PYTHON = os.environ.get("GOLDEN_OPENLLAMA_PYTHON", "/opt/venv457/bin/python")

# What transformers returns as `hidden_states` (checked by hand against the layer modules, 5.23
# and 4.57 Open-Llama alike): the embedding output, then the output of layers 0 .. L-2, and last
# the output of layer L-1 *after* the final RMSNorm (5.x overwrites it with last_hidden_state).
HIDDEN_STATES_LAYOUT = ("[embeddings, layer_0_out, ..., layer_{L-2}_out, final_norm(layer_{L-1}_out)]"
                        " -- num_layers+1 entries; the last is after the final norm")

# -- the cases ------------------------------------------------------------------------------

BASE_CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                   rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0})

HEAD_DIM = 8  # hidden 32 / 4 heads; longrope factor lists have HEAD_DIM // 2 entries


def rope(rope_type, **params):
    """A 5.x `rope_parameters` dict: rope("linear", factor=2.0) -> {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}."""
    return {"rope_type": rope_type, "rope_theta": params.pop("rope_theta", 10000.0), **params}


def case(name, description, arch="llama_causal", config=None, batch=2, seq_len=20, pad=None,
         position_ids=False, labels="lm", attentions=False, dtype="float32", max_shard_size=None,
         legacy_config=None):
    """One golden case.

    pad: per-row (side, amount) list, e.g. [("left", 0), ("left", 5)].
    position_ids: pass generate-style position ids (cumsum of the mask - 1) instead of
        letting the model default to arange(seq_len).
    labels: "lm" (next-token labels with -100 holes), "single", "regression", "multi", or None.
    legacy_config: rewrite config.json after saving into this older spelling (a function
        name in LEGACY_REWRITES); the script checks the rewritten file reloads identically.
    """
    cfg = dict(BASE_CONFIG)
    cfg.update(config or {})
    return dict(name=name, description=description, arch=arch, config=cfg, batch=batch,
                seq_len=seq_len, pad=pad, position_ids=position_ids, labels=labels,
                attentions=attentions, dtype=dtype, max_shard_size=max_shard_size,
                legacy_config=legacy_config)


LEFT_PAD = [("left", 0), ("left", 6)]
LONGROPE_SHORT = [1.0, 1.25, 1.7, 2.3]  # HEAD_DIM // 2 factors, one per frequency
LONGROPE_LONG = [1.1, 2.0, 3.5, 6.0]

CASES = [
    # attention layouts
    case("mha", "multi-head attention (4 query heads, 4 kv heads), default RoPE; attentions recorded",
         attentions=True),
    case("gqa", "grouped-query attention (4 query heads share 2 kv heads); rope_theta 500000 and "
         "rms_norm_eps 1e-5 (Llama-2/3 values, catches hard-coded constants); attentions recorded",
         config=dict(num_key_value_heads=2, rms_norm_eps=1e-5,
                     rope_parameters=rope("default", rope_theta=500000.0)), attentions=True),
    case("mqa", "multi-query attention (4 query heads share 1 kv head)",
         config=dict(num_key_value_heads=1)),
    case("head_dim_explicit", "explicit head_dim 16 != hidden/heads 8 (q_proj is 32 -> 64), GQA 4/2",
         config=dict(head_dim=16, num_key_value_heads=2)),
    # rope types
    case("rope_linear", "linear RoPE scaling (position interpolation), factor 2.5",
         config=dict(rope_parameters=rope("linear", factor=2.5))),
    case("rope_linear_legacy", "linear scaling written in the pre-5.x spelling: top-level rope_theta 500 + "
         "rope_scaling {'type': 'linear', 'factor': 2.0} and torch_dtype (as transformers 4.x wrote it)",
         config=dict(rope_parameters=rope("linear", factor=2.0, rope_theta=500.0)),
         legacy_config="legacy_rope_scaling"),
    case("rope_dynamic_long", "dynamic NTK scaling, factor 2, max_position_embeddings 16, sequence 24 > 16: "
         "transformers recomputes inv_freq with seq_len = max(position_ids)+1 = 24",
         config=dict(max_position_embeddings=16, rope_parameters=rope("dynamic", factor=2.0)), seq_len=24),
    case("rope_dynamic_short", "dynamic NTK scaling, factor 2, max_position_embeddings 16, sequence 12 <= 16: "
         "identical to default RoPE", config=dict(max_position_embeddings=16,
                                                 rope_parameters=rope("dynamic", factor=2.0)), seq_len=12),
    # YaRN blends interpolated and extrapolated frequencies along a ramp between two dimension indices
    # that depend on original_max_position_embeddings; head_dim 16 and a long original length put the
    # ramp inside the 8 frequencies, so beta_fast / beta_slow / truncate change the result.
    case("rope_yarn", "YaRN, factor 4, original_max_position_embeddings 256, head_dim 16 (defaults: beta_fast 32, "
         "beta_slow 1, truncate true, attention_factor 0.1 ln(4) + 1); ramp over frequencies 0..4",
         config=dict(head_dim=16, num_key_value_heads=2, max_position_embeddings=1024,
                     rope_parameters=rope("yarn", factor=4.0, original_max_position_embeddings=256))),
    case("rope_yarn_explicit", "YaRN with explicit beta_fast 8, beta_slow 2, mscale 1.0, mscale_all_dim 0.5 "
         "(attention_factor = mscale ratio) and truncate false: a fractional ramp (3.22 .. 4.42), head_dim 16",
         config=dict(head_dim=16, num_key_value_heads=2, max_position_embeddings=8192,
                     rope_parameters=rope("yarn", factor=4.0, original_max_position_embeddings=2048, beta_fast=8.0,
                                          beta_slow=2.0, mscale=1.0, mscale_all_dim=0.5, truncate=False))),
    case("rope_yarn_attention_factor", "YaRN with an explicit attention_factor 1.25 (scales cos and sin), factor 3",
         config=dict(head_dim=16, num_key_value_heads=2, max_position_embeddings=768,
                     rope_parameters=rope("yarn", factor=3.0, original_max_position_embeddings=256,
                                          attention_factor=1.25))),
    case("rope_yarn_legacy", "YaRN in the old spelling rope_scaling {'type': 'yarn', 'factor': 2.0} with no "
         "original_max_position_embeddings: it defaults to max_position_embeddings (1024; 512 = 1024 / factor would "
         "move the ramp)", config=dict(head_dim=16, num_key_value_heads=2, max_position_embeddings=1024,
                                       rope_parameters=rope("yarn", factor=2.0, original_max_position_embeddings=1024)),
         legacy_config="legacy_rope_scaling_yarn"),
    case("rope_longrope_short", "LongRoPE, sequence 12 <= original_max_position_embeddings 16: short_factor; "
         "no 'factor', so attention_factor = sqrt(1 + ln(64/16) / ln(16))",
         config=dict(max_position_embeddings=64,
                     rope_parameters=rope("longrope", short_factor=LONGROPE_SHORT, long_factor=LONGROPE_LONG,
                                          original_max_position_embeddings=16)), seq_len=12),
    case("rope_longrope_long", "LongRoPE, sequence 24 > original_max_position_embeddings 16: long_factor at "
         "every position", config=dict(max_position_embeddings=64,
                                      rope_parameters=rope("longrope", short_factor=LONGROPE_SHORT,
                                                           long_factor=LONGROPE_LONG,
                                                           original_max_position_embeddings=16)), seq_len=24),
    case("rope_longrope_factor", "LongRoPE with an explicit factor 3.0 (attention_factor = sqrt(1 + ln 3 / ln 16) "
         "instead of from 64/16), sequence 24 > 16",
         config=dict(max_position_embeddings=64,
                     rope_parameters=rope("longrope", short_factor=LONGROPE_SHORT, long_factor=LONGROPE_LONG,
                                          original_max_position_embeddings=16, factor=3.0)), seq_len=24),
    case("rope_longrope_attention_factor", "LongRoPE with an explicit attention_factor 0.9, sequence 24 > 16",
         config=dict(max_position_embeddings=64,
                     rope_parameters=rope("longrope", short_factor=LONGROPE_SHORT, long_factor=LONGROPE_LONG,
                                          original_max_position_embeddings=16, attention_factor=0.9)), seq_len=24),
    case("rope_llama3", "Llama 3.1 RoPE scaling: factor 8, low_freq_factor 1, high_freq_factor 4, "
         "original_max_position_embeddings 32 (head_dim 16: some frequencies kept, some divided, some smoothed)",
         config=dict(head_dim=16, max_position_embeddings=128,
                     rope_parameters=rope("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=32))),
    # heads, biases, tensor-parallel setting
    case("tied_head", "tie_word_embeddings: no lm_head.weight in the file, logits use embed_tokens",
         config=dict(tie_word_embeddings=True)),
    case("attention_bias", "attention_bias: q/k/v/o projections have biases", config=dict(attention_bias=True)),
    case("mlp_bias", "mlp_bias: gate/up/down projections have biases", config=dict(mlp_bias=True)),
    case("pretraining_tp2", "pretraining_tp 2 in config.json; transformers 5.x ignores it (no slicing in "
         "LlamaMLP/LlamaAttention), so the golden is the unsliced result", config=dict(pretraining_tp=2)),
    # checkpoint formats
    case("fp16", "float16 checkpoint; golden = HF in float32 on the same rounded weights; "
         "logits_native = HF computing in float16", config=dict(num_key_value_heads=2), dtype="float16"),
    case("bf16", "bfloat16 checkpoint; golden = HF in float32 on the same rounded weights; "
         "logits_native = HF computing in bfloat16", config=dict(num_key_value_heads=2), dtype="bfloat16"),
    case("sharded", "sharded checkpoint: model.safetensors.index.json + several model-0000k-of-0000n files",
         config=dict(num_key_value_heads=2), max_shard_size="40KB"),
    # padding
    case("left_pad", "left-padded batch (row 1 has 6 pad tokens) with attention_mask; position_ids not passed, so "
         "transformers uses arange(seq) for every row; compare where attention_mask == 1; attentions recorded",
         config=dict(num_key_value_heads=2), pad=LEFT_PAD, attentions=True),
    case("left_pad_position_ids", "left-padded batch with generate-style position_ids (mask.cumsum - 1, 1 on pads)",
         config=dict(num_key_value_heads=2), pad=LEFT_PAD, position_ids=True),
    case("right_pad", "right-padded batch (row 0 has 5 pad tokens at the end) with attention_mask",
         config=dict(num_key_value_heads=2), pad=[("right", 5), ("right", 0)]),
    # sequence classification
    case("cls_single_label", "LlamaForSequenceClassification, 3 labels, pad_token_id 0, rows: no pad / right pad 4 / "
         "left pad 3; logits pooled at the last non-pad token; cross-entropy loss on int labels",
         arch="llama_cls", config=dict(num_labels=3, pad_token_id=0, num_key_value_heads=2), batch=3,
         pad=[("right", 0), ("right", 4), ("left", 3)], labels="single"),
    case("cls_regression", "LlamaForSequenceClassification, num_labels 1 -> regression (MSE on float labels)",
         arch="llama_cls", config=dict(num_labels=1, pad_token_id=0), batch=3,
         pad=[("right", 0), ("right", 4), ("left", 3)], labels="regression"),
    case("cls_multi_label", "LlamaForSequenceClassification, problem_type multi_label_classification, 4 labels "
         "(BCE-with-logits on 0/1 float labels)",
         arch="llama_cls", config=dict(num_labels=4, pad_token_id=0, problem_type="multi_label_classification"),
         batch=3, pad=[("right", 2), ("right", 0), ("left", 5)], labels="multi"),
    # Open-Llama (transformers 4.57)
    case("openllama_stable_shared", "Open-Llama (transformers 4.57): use_stable_embedding (LayerNorm after the "
         "embedding) and shared_input_output_embedding (logits = h @ embed_tokens.T, no lm_head); attentions "
         "recorded", arch="open_llama",
         config=dict(use_stable_embedding=True, shared_input_output_embedding=True), attentions=True),
    case("openllama_plain", "Open-Llama (transformers 4.57) with use_stable_embedding and "
         "shared_input_output_embedding both false (separate lm_head)", arch="open_llama",
         config=dict(use_stable_embedding=False, shared_input_output_embedding=False)),
]
CASES_BY_NAME = {c["name"]: c for c in CASES}


# -- config.json rewrites into older spellings -------------------------------------------

def legacy_rope_scaling(cfg: dict) -> dict:
    """5.x spelling -> 4.x spelling: rope_parameters {rope_type, rope_theta, factor}
    becomes rope_theta + rope_scaling {"type": ..., "factor": ...}; dtype becomes torch_dtype."""
    params = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = {"type": params.pop("rope_type"), **params}
    cfg["torch_dtype"] = cfg.pop("dtype")
    return cfg


def legacy_rope_scaling_yarn(cfg: dict) -> dict:
    """As legacy_rope_scaling, and drop original_max_position_embeddings (it then defaults to max_position_embeddings)."""
    cfg = legacy_rope_scaling(cfg)
    assert cfg["rope_scaling"].pop("original_max_position_embeddings") == cfg["max_position_embeddings"]
    return cfg


LEGACY_REWRITES = {"legacy_rope_scaling": legacy_rope_scaling, "legacy_rope_scaling_yarn": legacy_rope_scaling_yarn}


# -- inputs --------------------------------------------------------------------------------

def case_seed(name: str) -> int:
    """A seed from the case name, so cases never shift each other's random draws."""
    return zlib.crc32(name.encode())


def make_inputs(c: dict) -> dict:
    """The numpy inputs of a case: input_ids, and attention_mask / position_ids / labels where it has them."""
    rng = np.random.default_rng(case_seed(c["name"]))
    batch, seq, vocab = c["batch"], c["seq_len"], c["config"]["vocab_size"]
    pad_id = c["config"].get("pad_token_id") or 0
    input_ids = rng.integers(3, vocab, size=(batch, seq)).astype(np.int64)  # never the pad id 0
    out = {"input_ids": input_ids}
    if c["pad"] is not None:
        mask = np.ones((batch, seq), dtype=np.int64)
        for row, (side, amount) in enumerate(c["pad"]):
            if amount:
                cols = slice(0, amount) if side == "left" else slice(seq - amount, seq)
                mask[row, cols] = 0
        input_ids[mask == 0] = pad_id
        out["attention_mask"] = mask
        if c["position_ids"]:  # what generate() passes: count real tokens; pads get 1
            pos = np.cumsum(mask, axis=-1) - 1
            pos[mask == 0] = 1
            out["position_ids"] = pos.astype(np.int64)
    elif c["position_ids"]:
        out["position_ids"] = np.broadcast_to(np.arange(seq), (batch, seq)).astype(np.int64).copy()
    kind = c["labels"]
    if kind == "lm":
        labels = input_ids.copy()
        labels[rng.random((batch, seq)) < 0.2] = -100  # ignored positions
        if "attention_mask" in out:
            labels[out["attention_mask"] == 0] = -100
        out["labels"] = labels
    elif kind == "single":
        out["labels"] = rng.integers(0, c["config"]["num_labels"], size=(batch,)).astype(np.int64)
    elif kind == "regression":
        out["labels"] = rng.normal(size=(batch,)).astype(np.float32)
    elif kind == "multi":
        out["labels"] = (rng.random((batch, c["config"]["num_labels"])) < 0.5).astype(np.float32)
    return out


# -- building, running, saving (torch from here on) ----------------------------------------

def randomize_weights_(model, seed: int) -> None:
    """Redraw every parameter so logits vary a lot (HF's std-0.02 init gives near-uniform logits)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head appears once, as embed_tokens
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif p.ndim == 1:  # RMSNorm / LayerNorm weights
                p.copy_(1.0 + 0.1 * noise)
            elif "embed_tokens" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.2 * noise)


def build_model(c: dict):
    """The in-memory transformers model of a case (float32, eager attention, randomised weights)."""
    import torch
    import transformers

    torch.manual_seed(case_seed(c["name"]))
    cfg = dict(c["config"])
    if c["arch"] == "open_llama":
        cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
        del cfg["num_key_value_heads"]  # Open-Llama has plain multi-head attention only
        cfg.update(hidden_dropout_prob=0.0, attention_dropout_prob=0.0, pad_token_id=0)
        config = transformers.OpenLlamaConfig(**cfg)
        model = transformers.OpenLlamaForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**cfg)
        config._attn_implementation = "eager"  # the only implementation that returns attentions
        head = transformers.LlamaForSequenceClassification if c["arch"] == "llama_cls" else transformers.LlamaForCausalLM
        model = head(config)
    randomize_weights_(model, case_seed(c["name"]))
    return model.eval()


def load_model(c: dict, path: Path, dtype: str = "float32"):
    """The checkpoint as transformers reloads it from disk, computing in `dtype`."""
    import torch
    import transformers

    torch_dtype = getattr(torch, dtype)
    if c["arch"] == "open_llama":
        return transformers.OpenLlamaForCausalLM.from_pretrained(path, dtype=torch_dtype).eval()
    head = transformers.LlamaForSequenceClassification if c["arch"] == "llama_cls" else transformers.LlamaForCausalLM
    return head.from_pretrained(path, dtype=torch_dtype, attn_implementation="eager").eval()


def run_model(model, inputs: dict, attentions: bool) -> dict:
    """transformers' outputs for the case inputs, as float32 numpy arrays."""
    import torch

    kwargs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        out = model(**kwargs, output_hidden_states=True, output_attentions=attentions, use_cache=False)
    res = {"logits": out.logits.float().numpy(),
           "hidden_states": torch.stack(out.hidden_states).float().numpy()}
    if attentions:
        res["attentions"] = torch.stack(out.attentions).float().numpy()
    if out.loss is not None:
        res["loss"] = np.float32(out.loss.float().item())
    return res


def save_checkpoint(c: dict, model, case_dir: Path) -> None:
    """save_pretrained in the case's dtype and shard size, then any legacy config.json rewrite."""
    import torch

    if c["dtype"] != "float32":
        model = copy.deepcopy(model).to(getattr(torch, c["dtype"]))  # .to() on a module works in place
    kwargs = {"safe_serialization": True}
    if c["max_shard_size"]:
        kwargs["max_shard_size"] = c["max_shard_size"]
    model.save_pretrained(case_dir, **kwargs)
    if c["legacy_config"]:
        path = case_dir / "config.json"
        cfg = LEGACY_REWRITES[c["legacy_config"]](json.loads(path.read_text()))
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def config_spelling(c: dict) -> str:
    if c["legacy_config"]:
        return f"rewritten by {c['legacy_config']}: {LEGACY_REWRITES[c['legacy_config']].__doc__.split(';')[0]}"
    if c["arch"] == "open_llama":
        return "transformers 4.57 save_pretrained (top-level rope_theta, rope_scaling, torch_dtype)"
    return "transformers 5.x save_pretrained (rope_parameters holding rope_theta, dtype)"


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def make_case(c: dict, out_dir: Path = GOLDEN_DIR) -> None:
    """Build, save, reload and record one case in this python (right transformers version assumed)."""
    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    case_dir = out_dir / c["name"]
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    inputs = make_inputs(c)

    model = build_model(c)
    if c["dtype"] != "float32":  # round the weights (not the rope buffers) to the checkpoint dtype
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(getattr(torch, c["dtype"])).float())
    # save before running: a classification loss writes config.problem_type, and cls_single_label /
    # cls_regression must leave it null in config.json (the reader then infers it, as transformers does)
    save_checkpoint(c, model, case_dir)
    in_memory = run_model(model, inputs, c["attentions"])

    reloaded = load_model(c, case_dir)
    golden = run_model(reloaded, inputs, c["attentions"])
    drift = max_abs_diff(in_memory, golden)
    if drift > 1e-6:  # the file does not describe the model we built: a config field did not round-trip
        raise RuntimeError(f"case {c['name']}: reloaded checkpoint differs from the in-memory model by {drift:.3g}")
    if c["dtype"] != "float32":
        native = run_model(load_model(c, case_dir, c["dtype"]), inputs, attentions=False)
        golden["logits_native"] = native["logits"]
        if "loss" in native:
            golden["loss_native"] = native["loss"]

    np.savez_compressed(case_dir / "golden.npz", **inputs, **golden)
    num_layers = c["config"]["num_hidden_layers"]
    meta = {
        "case": c["name"],
        "description": c["description"],
        "hf_class": type(reloaded).__name__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "checkpoint_dtype": c["dtype"],
        "golden_compute_dtype": "float32",
        "attn_implementation": "eager",
        "inputs": sorted(inputs),
        "outputs": sorted(golden),
        "position_ids_passed": "position_ids" in inputs,
        "padding": [list(p) for p in c["pad"]] if c["pad"] else None,
        "compare_positions": "where attention_mask == 1 (pad rows are garbage by convention)"
                             if "attention_mask" in inputs else "all",
        "hidden_states_layout": HIDDEN_STATES_LAYOUT,
        "hidden_states_shape": list(golden["hidden_states"].shape),
        "attentions_shape": list(golden["attentions"].shape) if "attentions" in golden else None,
        "num_layers": num_layers,
        "config_spelling": config_spelling(c),
        "pretraining_tp_honoured": False,  # neither 5.x nor 4.57 LlamaMLP/LlamaAttention slice by pretraining_tp
        "seed": case_seed(c["name"]),
        "weight_init": "matrices N(0, 0.2^2), embeddings N(0, 0.5^2), norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2)",
        "generated_by": "tools/make_golden.py",
    }
    (case_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", help="only this case (repeatable); default: all")
    parser.add_argument("--list", action="store_true", help="print the case names and descriptions")
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR, help="golden directory (default: %(default)s)")
    parser.add_argument("--in-this-python", action="store_true",
                        help="internal: make the given cases here, without re-running Open-Llama in the venv")
    args = parser.parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c['name']:32s} {c['description']}")
        return
    names = args.case or [c["name"] for c in CASES]
    unknown = [n for n in names if n not in CASES_BY_NAME]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; see --list")
    chosen = [CASES_BY_NAME[n] for n in names]

    if args.in_this_python:
        for c in chosen:
            make_case(c, args.out)
        return
    if transformers_major() < 5:
        sys.exit("run this with transformers 5.x (the Llama cases); Open-Llama cases go to the 4.57 venv by themselves")
    for c in chosen:
        if c["arch"] != "open_llama":
            print(f"making {c['name']} ...", flush=True)
            make_case(c, args.out)
    open_llama = [c["name"] for c in chosen if c["arch"] == "open_llama"]
    if open_llama:  # transformers 5.x removed Open-Llama; 4.57 still has it
        print(f"making {', '.join(open_llama)} with {OPENLLAMA_PYTHON} (transformers 4.57) ...", flush=True)
        cmd = [OPENLLAMA_PYTHON, __file__, "--in-this-python", "--out", str(args.out)]
        for n in open_llama:
            cmd += ["--case", n]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    total = 0
    print(f"\n{'case':32s} {'size (KB)':>9s}  files")
    for c in CASES:
        d = args.out / c["name"]
        if d.exists():
            size = dir_size(d)
            total += size
            print(f"{c['name']:32s} {size / 1024:9.1f}  {len(list(d.iterdir()))}")
    print(f"{'total':32s} {total / 1024:9.1f}")


if __name__ == "__main__":
    main()
