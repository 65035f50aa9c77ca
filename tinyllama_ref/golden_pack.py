"""The conformance pack: tiny checkpoints, their inputs, and every intermediate, for other implementations.

Someone writing LLaMA in Rust, C or JAX needs more than "the logits should match": they need a
checkpoint to load, inputs to run (a prefill, decode steps through a KV cache, a padded batch), and
every intermediate tensor under a stable name, so that the first wrong one points at the bug.
`tinyllama-ref golden --out DIR` writes that, one directory per case:

    DIR/manifest.json            versions, tolerances per dtype, the tensor names, the inputs, the files
    DIR/<case>/config.json       a Hugging Face config (rope in the `rope_theta` + `rope_scaling` spelling)
    DIR/<case>/model.safetensors the weights, in the case's dtype (float32, float16 or bfloat16)
    DIR/<case>/prefill.safetensors   8 tokens from an empty cache
    DIR/<case>/decode_0..2.safetensors  one token each, through the cache the previous inputs filled
    DIR/<case>/batch.safetensors     2 rows of 10 tokens, row 1 left-padded by 3, with attention_mask

Each input file is a `parity.dump` of that forward pass (`parity.trace_forward`): the inputs, then
every intermediate in forward order, then the logits. The weights are drawn here with NumPy from a
seed derived from the case name (no torch), so the pack regenerates byte for byte from the package
alone. tests/test_golden_pack.py loads every checkpoint in transformers and checks the pack against
it. `tinyllama-ref compare DIR/<case> THEIRS` reads an implementer's dumps against a case.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import LlamaConfig
from .errors import short
from .formats.checkpoint import random_tensors
from .atomic import write_text_atomic
from .formats.safetensors import write_safetensors
from .kv_cache import KVCache
from .parity import compare_dumps, print_comparison, save_tensors, trace_forward

FORMAT_VERSION = 1
PREFILL_LEN, DECODE_STEPS, BATCH_LEN, BATCH_PAD, PAD_ID = 8, 3, 10, 3, 0
INPUTS = ("prefill",) + tuple(f"decode_{i}" for i in range(DECODE_STEPS)) + ("batch",)
CASE_FILES = ("config.json", "model.safetensors") + tuple(f"{name}.safetensors" for name in INPUTS)
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_TOLERANCE = 1  # at 1, a value off by its own size agrees: no comparison at all

# The tiny model of tests/fixtures/golden (tools/make_golden.py), with intermediate_size 72 instead of 80 to
# keep the pack under 5 MB; every case changes a few fields.
BASE_CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=64, hidden_size=32,
                   intermediate_size=72, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                   hidden_act="silu", max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                   rope_scaling=None, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                   pretraining_tp=1, bos_token_id=1, eos_token_id=2, pad_token_id=PAD_ID)
OPEN_LLAMA = dict(architectures=["OpenLlamaForCausalLM"], model_type="open-llama", num_key_value_heads=None,
                  use_stable_embedding=True, shared_input_output_embedding=True, tie_word_embeddings=None,
                  attention_bias=None, mlp_bias=None, pretraining_tp=None)  # None: the key is left out

# Tolerances for `compare`, by the dtype the implementation computes in: |ours - theirs| <= atol + rtol*|theirs|.
TOLERANCES = {
    "float32": {"rtol": 1e-3, "atol": 1e-4,
                "how_chosen": "the parity kit's defaults. transformers 5.24 (float32, eager) agrees with the pack to "
                              "max |Δ| 7e-6 (logits), 4e-6 (hidden states), 1e-6 (attention probabilities) over every "
                              "case and input (tests/test_golden_pack.py): a margin of over 10 for a correct "
                              "float32 implementation, while a real bug moves values by 1e-2 or more"},
    "float16": {"rtol": 2e-2, "atol": 3e-2,
                "how_chosen": "on the float16 case, transformers computing in float16 reaches max |Δ| 9e-3 (logits "
                              "and hidden states) and 2e-3 (probabilities) against the pack, and tinyllama_ref's "
                              "float16 compute passes at these tolerances in every intermediate (both checked by "
                              "the test): about 3 times the largest error measured"},
    "bfloat16": {"rtol": 5e-2, "atol": 2e-1,
                 "how_chosen": "on the bfloat16 case, transformers computing in bfloat16 reaches max |Δ| 7.6e-2 "
                               "(logits), 5.8e-2 (hidden states), 1.3e-2 (probabilities) against the pack (checked "
                               "by the test): bfloat16 keeps 8 significant bits, 8 times fewer than float16; about "
                               "2.5 times the largest error measured"},
}

# name pattern -> (shape, meaning); b = batch, s = this call's tokens, t = cached + new tokens,
# h / g = query / key-value heads, d = head_dim, D = hidden_size, F = intermediate_size, V = vocab_size.
TENSOR_NAMES = {
    "input_ids": ("[b, s] int64", "the token ids fed to this call"),
    "attention_mask": ("[b, t] int64", "1 for a real token, 0 for padding (the batch input only)"),
    "position_ids": ("[b, s] int64", "the position of each token (RoPE's m)"),
    "embed_tokens": ("[b, s, D]", "the token embeddings (Open-Llama: after its embedding LayerNorm)"),
    "layers.N.input_layernorm": ("[b, s, D]", "RMSNorm before attention"),
    "layers.N.self_attn.q": ("[b, h, s, d]", "q_proj output split into heads, before RoPE"),
    "layers.N.self_attn.k": ("[b, g, s, d]", "k_proj output split into heads, before RoPE (new tokens only)"),
    "layers.N.self_attn.v": ("[b, g, s, d]", "v_proj output split into heads (new tokens only)"),
    "layers.N.self_attn.q_rope": ("[b, h, s, d]", "q after RoPE, Hugging Face's rotate-half layout: pairs "
                                                  "(x[i], x[i + d/2])"),
    "layers.N.self_attn.k_rope": ("[b, g, s, d]", "k after RoPE (rotate-half layout)"),
    "layers.N.self_attn.probs": ("[b, h, s, t]", "attention probabilities after the causal and padding mask and "
                                                 "softmax, over every cached and new key"),
    "layers.N.self_attn.context": ("[b, s, h*d]", "probs @ values, heads merged: the input of o_proj"),
    "layers.N.self_attn.o_proj": ("[b, s, D]", "attention output"),
    "layers.N.attn_residual": ("[b, s, D]", "residual stream after attention"),
    "layers.N.post_attention_layernorm": ("[b, s, D]", "RMSNorm before the MLP"),
    "layers.N.mlp.gate_proj": ("[b, s, F]", "gate_proj output"),
    "layers.N.mlp.up_proj": ("[b, s, F]", "up_proj output"),
    "layers.N.mlp.act_mul": ("[b, s, F]", "silu(gate) * up: the input of down_proj"),
    "layers.N.mlp.down_proj": ("[b, s, D]", "MLP output"),
    "layers.N.output": ("[b, s, D]", "residual stream after the layer (transformers' hidden_states[N + 1], "
                                     "except the last layer's)"),
    "norm": ("[b, s, D]", "the final RMSNorm (transformers' last hidden_states entry)"),
    "logits": ("[b, s, V]", "the LM head's output"),
}


@dataclass(frozen=True)
class PackCase:
    """One checkpoint of the pack: a name, what it covers, its config.json fields beyond BASE_CONFIG, its dtype."""

    name: str
    description: str
    config: dict = field(default_factory=dict)
    dtype: str = "float32"


def _rope(rope_type: str, **params) -> dict:
    return {"rope_type": rope_type, **params}


CASES = [
    PackCase("mha", "multi-head attention (4 query heads, 4 key-value heads), default RoPE"),
    PackCase("gqa", "grouped-query attention (4 query heads share 2 kv heads), rope_theta 500000, rms_norm_eps 1e-5",
             dict(num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5)),
    PackCase("mqa", "multi-query attention (4 query heads share 1 kv head)", dict(num_key_value_heads=1)),
    PackCase("head_dim_explicit", "head_dim 16 given in config.json, not hidden_size / heads = 8 (q_proj 32 -> 64)",
             dict(head_dim=16, num_key_value_heads=2)),
    PackCase("rope_linear", "linear RoPE scaling (position interpolation), factor 2.5",
             dict(rope_scaling=_rope("linear", factor=2.5))),
    PackCase("rope_dynamic", "dynamic NTK scaling, factor 2, max_position_embeddings 8: the prefill (8 tokens) is "
                             "plain RoPE; each decode step (positions 8-10) and the batch (10) rescale the base "
                             "from the call's own largest position + 1 (transformers' rotary module instead keeps "
                             "the longest it has seen: run the batch on a fresh model there)",
             dict(max_position_embeddings=8, rope_scaling=_rope("dynamic", factor=2.0))),
    PackCase("rope_yarn", "YaRN, factor 4, original_max_position_embeddings 256, head_dim 16 (beta_fast 32, "
                          "beta_slow 1, attention_factor 0.1 ln 4 + 1)",
             dict(head_dim=16, num_key_value_heads=2, max_position_embeddings=1024,
                  rope_scaling=_rope("yarn", factor=4.0, original_max_position_embeddings=256))),
    PackCase("rope_longrope", "LongRoPE, original_max_position_embeddings 8: the prefill uses short_factor, the "
                              "decode steps and the batch (past 8 positions) long_factor",
             dict(max_position_embeddings=32,
                  rope_scaling=_rope("longrope", short_factor=[1.0, 1.25, 1.7, 2.3], long_factor=[1.1, 2.0, 3.5, 6.0],
                                     original_max_position_embeddings=8))),
    PackCase("rope_llama3", "Llama 3.1 scaling: factor 8, low_freq_factor 1, high_freq_factor 4, "
                            "original_max_position_embeddings 32, head_dim 16",
             dict(head_dim=16, max_position_embeddings=128,
                  rope_scaling=_rope("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_position_embeddings=32))),
    PackCase("tied_head", "tie_word_embeddings: no lm_head.weight in the file; logits = norm @ embed_tokens.T",
             dict(tie_word_embeddings=True)),
    PackCase("attention_bias", "biases on q/k/v/o_proj", dict(attention_bias=True)),
    PackCase("mlp_bias", "biases on gate/up/down_proj", dict(mlp_bias=True)),
    PackCase("pretraining_tp2", "pretraining_tp 2: projections computed in 2 slices (same math, other rounding; "
                                "transformers ignores the field)", dict(pretraining_tp=2, num_key_value_heads=2)),
    PackCase("open_llama", "Open-Llama: a LayerNorm (weight and bias, eps 1e-5) after the embedding, and the "
                           "embedding matrix reused as the LM head (no lm_head.weight)", OPEN_LLAMA),
    PackCase("float16", "float16 checkpoint (GQA 4/2); the pack is computed in float32 from the float16 weights",
             dict(num_key_value_heads=2), dtype="float16"),
    PackCase("bfloat16", "bfloat16 checkpoint (GQA 4/2); the pack is computed in float32 from the bfloat16 weights",
             dict(num_key_value_heads=2), dtype="bfloat16"),
]
CASES_BY_NAME = {c.name: c for c in CASES}


def case_seed(name: str) -> int:
    """The case's seed: CRC-32 of its name, so adding a case never changes another."""
    return zlib.crc32(name.encode())


def case_config(case: PackCase) -> dict:
    """The case's config.json: BASE_CONFIG, the case's fields over it (None drops a field), its dtype."""
    cfg = {**BASE_CONFIG, **case.config, "torch_dtype": case.dtype}
    return {k: v for k, v in cfg.items() if v is not None or k == "rope_scaling"}


def case_weights(config: LlamaConfig, seed: int) -> dict[str, np.ndarray]:
    """Every tensor the config needs, float32, drawn with NumPy from `seed`.

    Matrices and biases N(0, 0.2²), norm weights 1 + N(0, 0.1²) (`checkpoint.random_tensors`), then the
    token embedding scaled to N(0, 0.5²). HF's 0.02 init would give nearly uniform logits, which hide bugs.
    """
    tensors = random_tensors(config, seed=seed, std=0.2)
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"] * np.float32(2.5)
    return {k: tensors[k] for k in sorted(tensors)}  # sorted: the file's layout does not hang on dict order


def write_checkpoint(case: PackCase, case_dir: Path) -> LlamaConfig:
    """config.json + model.safetensors (in the case's dtype) in `case_dir`; returns the config."""
    cfg = case_config(case)
    config = LlamaConfig.from_dict(cfg, source=case.name)
    tensors = case_weights(config, case_seed(case.name))
    if case.dtype == "float16":
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
    write_safetensors(case_dir / "model.safetensors", tensors, {"format": "pt"},
                      bf16=tensors if case.dtype == "bfloat16" else ())
    write_text_atomic(case_dir / "config.json", json.dumps(cfg, indent=2) + "\n")
    return config


def case_inputs(case: PackCase, vocab_size: int) -> dict[str, dict[str, np.ndarray]]:
    """{input name: {"input_ids", "position_ids"[, "attention_mask"]}}: ids drawn from [3, vocab) (never pad/bos/eos).

    decode_k continues the prefill at position PREFILL_LEN + k. The batch's row 1 is left-padded and
    gets generate-style positions (real tokens count from 0, pads 1), so its real tokens are those of
    an unpadded 7-token sequence.
    """
    rng = np.random.default_rng(case_seed(case.name))
    ids = rng.integers(3, vocab_size, size=PREFILL_LEN + DECODE_STEPS).astype(np.int64)
    out = {"prefill": {"input_ids": ids[None, :PREFILL_LEN], "position_ids": np.arange(PREFILL_LEN)[None]}}
    for k in range(DECODE_STEPS):
        at = PREFILL_LEN + k
        out[f"decode_{k}"] = {"input_ids": ids[None, at:at + 1], "position_ids": np.array([[at]])}
    batch = rng.integers(3, vocab_size, size=(2, BATCH_LEN)).astype(np.int64)
    mask = np.ones((2, BATCH_LEN), dtype=np.int64)
    mask[1, :BATCH_PAD] = 0
    batch[mask == 0] = PAD_ID
    positions = np.where(mask == 1, np.cumsum(mask, axis=-1) - 1, 1)
    out["batch"] = {"input_ids": batch, "attention_mask": mask, "position_ids": positions.astype(np.int64)}
    return {name: {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in d.items()} for name, d in out.items()}


def run_inputs(model, inputs: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Trace every input: the prefill and decode steps share one KV cache, the batch runs on its own."""
    cache = KVCache.allocate(model.config, 1, PREFILL_LEN + DECODE_STEPS,
                             like=model.params["model"]["embed_tokens"]["weight"])
    dumps = {}
    for name, given in inputs.items():
        dumps[name] = trace_forward(model, **given, past_key_values=None if name == "batch" else cache)
    return dumps


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_case(case: PackCase, out: Path) -> dict:
    """Write one case's directory; returns its manifest entry."""
    from .model import load

    case_dir = out / case.name
    case_dir.mkdir(parents=True, exist_ok=True)
    config = write_checkpoint(case, case_dir)
    model = load(case_dir, dtype="float32")  # from the file as written: float16 / bfloat16 weights upcast exactly
    dumps = run_inputs(model, case_inputs(case, config.vocab_size))
    for name, tensors in dumps.items():
        save_tensors(case_dir / f"{name}.safetensors", tensors, {"producer": "tinyllama_ref golden",
                                                                  "case": case.name, "input": name})
    files = CASE_FILES  # the checkpoint and one dump per input
    return {"description": case.description, "checkpoint_dtype": case.dtype, "seed": case_seed(case.name),
            "config": case_config(case), "parameters": model.num_parameters(),
            "checkpoint": ["config.json", "model.safetensors"], "inputs": {n: f"{n}.safetensors" for n in dumps},
            "sha256": {f: _sha256(case_dir / f) for f in files},
            "bytes": sum((case_dir / f).stat().st_size for f in files)}


def manifest(cases: dict[str, dict]) -> dict:
    """The pack's manifest.json: what a reader needs to use the files without reading this code."""
    from . import __version__

    return {
        "format": "tinyllama_ref conformance pack",
        "format_version": FORMAT_VERSION,
        "versions": {"tinyllama_ref": __version__, "numpy": np.__version__},
        "regenerate": "tinyllama-ref golden --out DIR (same package and NumPy versions: the same bytes)",
        "weights": "NumPy default_rng(seed = CRC-32 of the case name): every matrix and bias N(0, 0.2^2), RMSNorm "
                   "and LayerNorm weights 1 + N(0, 0.1^2), embed_tokens N(0, 0.5^2); float16 / bfloat16 cases "
                   "round those (bfloat16: to nearest even)",
        "compute": "every tensor of the pack was computed in float32 (weights upcast exactly from the checkpoint's "
                   "dtype), eager attention, by tinyllama_ref; tests/test_golden_pack.py checks logits, hidden "
                   "states and attention probabilities against transformers 5.24 (Open-Llama against the Llama "
                   "model of transformers with a LayerNorm hooked after the embedding)",
        "comparison": "a tensor agrees when every element has |pack - yours| <= atol + rtol * |yours| (numpy.allclose); "
                      "in the batch input, positions where attention_mask == 0 are not compared (set to 0 on both "
                      "sides): what a model computes for a pad token is not defined",
        "tolerances": TOLERANCES,
        "tensors": {name: {"shape": shape, "meaning": meaning} for name, (shape, meaning) in TENSOR_NAMES.items()},
        "tensor_notes": "N is the layer index (0-based); shapes are row-major, float32 except the int64 inputs; "
                        "heads are on axis 1 of the per-head tensors. Names missing from your dump are listed, "
                        "not failed.",
        "inputs": {
            "prefill": f"input_ids [1, {PREFILL_LEN}] at positions 0..{PREFILL_LEN - 1}, into an empty KV cache",
            **{f"decode_{k}": f"one token [1, 1] at position {PREFILL_LEN + k}, with the KV cache filled by prefill"
                              f"{''.join(f', decode_{j}' for j in range(k))}: q/k/v are the new token's, probs "
                              f"[1, h, 1, {PREFILL_LEN + k + 1}] cover every cached key" for k in range(DECODE_STEPS)},
            "batch": f"input_ids [2, {BATCH_LEN}] with attention_mask (row 1 left-padded by {BATCH_PAD}, pad id "
                     f"{PAD_ID}) and generate-style position_ids (mask.cumsum(-1) - 1, pads 1); no cache",
        },
        "cases": cases,
        "bytes": sum(c["bytes"] for c in cases.values()),
    }


def write_pack(out: str | Path, names: list[str] | None = None, progress=None) -> dict:
    """Write the pack (every case, or `names`) under `out`, manifest.json last; returns the manifest."""
    out = Path(out)
    unknown = [n for n in names or [] if n not in CASES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; the cases are {', '.join(CASES_BY_NAME)}")
    out.mkdir(parents=True, exist_ok=True)
    entries = {}
    for case in [CASES_BY_NAME[n] for n in names] if names else CASES:
        entries[case.name] = write_case(case, out)
        if progress:
            progress(case.name, entries[case.name]["bytes"])
    pack = manifest(entries)
    write_text_atomic(out / "manifest.json", json.dumps(pack, indent=2) + "\n")
    return pack


# -- reading an implementer's dumps against a case ---------------------------------------------

class PackError(ValueError):
    """A conformance pack that cannot be trusted: a field of manifest.json, or a file not as the manifest says."""


def read_manifest(case_dir: Path) -> dict:
    """The manifest.json of the pack holding `case_dir` (its parent directory), with the fields `compare`
    uses checked: the tolerances, numbers in [0, MAX_TOLERANCE); the case's SHA-256 of each of its files."""
    path = case_dir.parent / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{case_dir} is not a case of a conformance pack: no {path} "
                                f"(write one with `tinyllama-ref golden --out DIR`)")
    try:
        pack = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise PackError(f"{path}: not valid JSON ({e})") from None
    cases = pack.get("cases") if isinstance(pack, dict) else None
    if not isinstance(cases, dict) or case_dir.name not in cases:
        raise PackError(f"{path} does not list a case {case_dir.name!r}")
    tolerances = pack.get("tolerances")
    if not isinstance(tolerances, dict) or not tolerances:
        raise PackError(f"{path}: field 'tolerances' must be an object of dtype -> {{rtol, atol}}, got "
                        f"{short(tolerances)}")
    for dtype, tol in tolerances.items():
        for key in ("rtol", "atol"):
            v = tol.get(key) if isinstance(tol, dict) else None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < MAX_TOLERANCE:
                raise PackError(f"{path}: field 'tolerances.{dtype}.{key}' is {short(v)}, expected a number "
                                f"in [0, {MAX_TOLERANCE})")
    hashes = cases[case_dir.name].get("sha256") if isinstance(cases[case_dir.name], dict) else None
    if not isinstance(hashes, dict) or not all(isinstance(hashes.get(f), str) and SHA256.fullmatch(hashes[f])
                                               for f in CASE_FILES):
        raise PackError(f"{path}: field 'cases.{case_dir.name}.sha256' must give the SHA-256 (64 hex digits) "
                        f"of each of {', '.join(CASE_FILES)}")
    return pack


def check_case_files(case_dir: Path, pack: dict) -> None:
    """Every file of the case has the SHA-256 its manifest gives: a changed reference is refused, by name."""
    for name, expected in ((f, pack["cases"][case_dir.name]["sha256"][f]) for f in CASE_FILES):
        path = case_dir / name
        if not path.is_file():
            raise PackError(f"{path}: missing from the pack (manifest.json lists it)")
        if _sha256(path) != expected:
            raise PackError(f"{path}: its SHA-256 is not the one manifest.json gives: the file was changed after "
                            f"the pack was written; write the pack again (tinyllama-ref golden)")


def their_files(case_dir: Path, theirs: Path, input_name: str | None) -> dict[str, Path | None]:
    """{input name: their dump}: a directory holds <input>.safetensors (or .npz) per input (None where
    absent); a single file is the input named by `input_name`, else by its own stem."""
    if theirs.is_dir():
        found = {}
        for name in INPUTS if input_name is None else [input_name]:
            found[name] = next((p for p in (theirs / f"{name}.safetensors", theirs / f"{name}.npz") if p.is_file()),
                               None)
        return found
    name = input_name or theirs.stem
    if name not in INPUTS:
        raise ValueError(f"which input of {case_dir} is {theirs.name} a dump of? Name the file after the input, "
                         f"or pass --input (one of {', '.join(INPUTS)})")
    return {name: theirs}


def compare_case(case_dir: str | Path, theirs: str | Path, input_name: str | None = None, dtype: str = "float32",
                 rtol: float | None = None, atol: float | None = None, out=None) -> int:
    """Compare an implementer's dump(s) with a pack case; print each input's table and first divergence.

    Returns 0 when every dump given agrees (and at least one was given), else 1 (the CLI's exit code).
    Tolerances default to the manifest's for `dtype`, the dtype the implementation computes in.
    """
    out = out or sys.stdout
    case_dir, theirs = Path(case_dir), Path(theirs)
    pack = read_manifest(case_dir)
    check_case_files(case_dir, pack)
    if input_name is not None and input_name not in INPUTS:
        raise ValueError(f"--input {input_name!r}: the inputs are {', '.join(INPUTS)}")
    if dtype not in pack["tolerances"]:
        raise ValueError(f"no tolerances for dtype {dtype!r} in the manifest; it has {', '.join(pack['tolerances'])}")
    rtol = pack["tolerances"][dtype]["rtol"] if rtol is None else rtol
    atol = pack["tolerances"][dtype]["atol"] if atol is None else atol
    if not theirs.exists():
        raise FileNotFoundError(f"dump not found: {theirs}")
    results, compared, shown = {}, 0, False
    for name, path in their_files(case_dir, theirs, input_name).items():
        if path is None:
            results[name] = "no dump given"
            continue
        rows = compare_dumps(case_dir / f"{name}.safetensors", path, rtol, atol)
        table = not shown and any(r["status"] != "ok" for r in rows)  # the table of the first input that differs
        shown = shown or table
        print(f"== {case_dir.name} / {name} ({path})", file=out)
        code = print_comparison(rows, rtol, atol, f"{case_dir / name} and {path}", out, table=table)
        compared += 1
        results[name] = "agrees" if code == 0 else "DIVERGES"
    print(f"\n{case_dir.name} ({dtype}: rtol={rtol}, atol={atol}): " +
          ", ".join(f"{name} {status}" for name, status in results.items()), file=out)
    if compared == 0:
        print(f"nothing compared: {theirs} holds none of {', '.join(f'{n}.safetensors' for n in INPUTS)}", file=out)
    return 0 if compared and all(s != "DIVERGES" for s in results.values()) else 1
