r"""The model as users call it: input checks, the variants' operations chosen once, outputs, loading.

`llama.py` is the model as the paper states it, and trusts its inputs. This module is the edge
around it: `layer_ops` chooses, once per model, the operations the config's variants hand to the
book's one layer (`pretraining_tp`'s slices, dequantizing projections, another activation, Open-Llama's
stable embedding, CuPy's fused kernels); `forward` validates and converts the inputs, runs
`llama.forward`, adds the head and the loss, and returns what transformers returns (`ModelOutput`),
hidden states and attentions included, which the book hands to an observer. `Model` bundles params,
config and those operations so that `model(input_ids)` reads like HF; `load` reads a checkpoint
directory, a GGUF file or Meta's checkpoint. The array module is chosen here, once, when the model is built.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import activations, heads, llama, losses, open_llama, packing, quantize as Q
from . import backend as B
from . import fused as fused_kernels
from .config import ConfigError, LlamaConfig, check_generation_config
from .kv_cache import KVCache, cache_signature
from .rope_scaling import RopeTables
from .tensor_parallel import parallel_ops, sliced_linears
from .formats.checkpoint import build_params, flatten, read_checkpoint_tensors
from .formats.peft_lora import apply_adapter


class InputError(ValueError):
    """Inputs the model cannot run on (ids out of range, wrong shapes, a foreign cache)."""


@dataclass
class ModelOutput:
    """What a forward pass returns (field names as in transformers' CausalLMOutputWithPast)."""

    logits: Any = None
    loss: Any = None
    past_key_values: KVCache | None = None
    hidden_states: tuple | None = None  # embedding output, then each layer's (the last after the final norm)
    attentions: tuple | None = None  # per layer: [batch, heads, query, key] probabilities
    extras: dict = field(default_factory=dict)


def check_inputs(config: LlamaConfig, input_ids, attention_mask, position_ids, cache, xp, shards: int = 1):
    """Validate ids, mask, positions and cache; return them as backend arrays with defaults filled in.

    Host (NumPy) inputs are checked on the host, then copied to the device once: the checks cost no
    device sync. Ids already on the device cost one sync (a single "any out of range?" read back).
    Also returns the cache length and the furthest position when it is known without reading the
    device (None when positions were given as device arrays).
    """
    if input_ids.ndim != 2:
        raise InputError(f"input_ids must be [batch, seq] (or a single [seq] sequence); got shape "
                         f"{tuple(input_ids.shape)}")
    b, s = input_ids.shape
    if s == 0 or b == 0:
        raise InputError(f"input_ids is empty (shape {(b, s)}): give at least one token")
    if input_ids.dtype.kind not in "iu":
        raise InputError(f"input_ids must be integers, got dtype {input_ids.dtype}")
    if not B.is_cupy_array(input_ids) or bool(((input_ids < 0) | (input_ids >= config.vocab_size)).any()):
        check_ids_in_vocabulary(B.to_numpy(input_ids), config.vocab_size)  # on the host: reads no device
    input_ids = xp.asarray(input_ids)
    past = 0
    if cache is not None:
        if not isinstance(cache, KVCache):
            raise InputError(f"past_key_values must be a KVCache returned by this model, got {type(cache).__name__}")
        if cache.signature != cache_signature(config, shards):
            raise InputError(f"past_key_values comes from another model: cache (layers, kv_heads, head_dim) = "
                             f"{cache.signature}, this model {cache_signature(config, shards)}")
        if cache.batch_size != b:
            raise InputError(f"past_key_values holds batch {cache.batch_size}, input_ids has batch {b}")
        past = cache.length
    if attention_mask is None:
        attention_mask = xp.ones((b, past + s), dtype=np.int64)
    else:
        attention_mask = xp.asarray(attention_mask)
        if attention_mask.shape != (b, past + s):
            raise InputError(f"attention_mask must have shape [batch, past + seq] = {(b, past + s)}, "
                             f"got {tuple(attention_mask.shape)}")
    furthest = past + s - 1
    if position_ids is None:
        position_ids = xp.broadcast_to(xp.arange(past, past + s, dtype=np.int64)[None], (b, s))
    else:
        if position_ids.ndim == 1:
            position_ids = position_ids[None]
        if position_ids.shape not in ((b, s), (1, s)) or position_ids.dtype.kind not in "iu":
            raise InputError(f"position_ids must be integers of shape [batch, seq] = {(b, s)} (or [1, seq]), "
                             f"got {tuple(position_ids.shape)} {position_ids.dtype}")
        furthest = None if B.is_cupy_array(position_ids) else int(position_ids.max())
        position_ids = xp.broadcast_to(xp.asarray(position_ids), (b, s))
    return input_ids, attention_mask, position_ids, past, furthest


def check_ids_in_vocabulary(ids: np.ndarray, vocab_size: int) -> None:
    """Raise InputError naming the first id outside [0, vocab_size) and where it is (host ids)."""
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"token id {int(ids[where])} at position {where} is outside the vocabulary "
                         f"[0, {vocab_size})")


def layer_ops(config: LlamaConfig, params: dict, xp=np, fused: bool = True, comm=None) -> llama.LayerOps:
    """The operations the config's variants hand to `llama.py`'s one layer, chosen once per model.

    q/k/v and gate/up packed at load run as one product per group (`packing.py`); `pretraining_tp` slices
    the projections; int8/int4 weights are dequantized just before each product;
    another `hidden_act` changes the gated product; with a communicator `comm` (`distributed.py`) the layer
    spreads over its ranks (`tensor_parallel.py`); Open-Llama's stable embedding adds a LayerNorm; on
    CuPy (unless `fused=False`) the pointwise steps run as fused kernels.
    """
    linears = sliced_linears(config.pretraining_tp)  # column_linear and row_linear
    if Q.is_quantized(params):
        linears = {name: Q.dequantizing(fn) for name, fn in linears.items()}
    ops = dict(linears, act_mul=activations.gated(config.hidden_act))
    if ops["column_linear"] is llama.linear:
        ops["column_linears"] = packing.packed_linears(params)  # q/k/v (gate/up) packed at load: one product each
    if comm is not None:
        ops.update(parallel_ops(ops, config, comm))  # row_linear all-reduces; embed and head_linear gather
    if config.is_open_llama and config.use_stable_embedding:
        ops["embed"] = partial(open_llama.stable_embedding, lookup=ops.get("embed", llama.embed))
    if xp is not np and fused:
        kernels = fused_kernels.KERNELS
        ops.update(rms_norm=kernels["rms_norm"], apply_rope=kernels["apply_rope"])
        if ops["act_mul"] is llama.silu_mul:
            ops["act_mul"] = kernels["act_mul"]
    return llama.LayerOps(**ops)


def recorder(into: dict, wanted: set | None = None):
    """An observer for `llama.LayerOps` that stores what it sees in `into` under its dump name
    ("layers.3.self_attn.q"); with `wanted`, only those names (a layer's without "layers.N.")."""

    def observe(prefix: str, **named) -> None:
        for name, value in named.items():
            full = f"{prefix}.{name}" if prefix else name
            if wanted is None or (full.split(".", 2)[2] if full.startswith("layers.") else full) in wanted:
                into[full] = value

    return observe


def forward(params: dict, config: LlamaConfig, input_ids, attention_mask=None, position_ids=None,
            past_key_values: KVCache | None = None, use_cache: bool = False, output_hidden_states: bool = False,
            output_attentions: bool = False, labels=None, logits_to_keep: int | Sequence[int] = 0,
            trace: dict | None = None, rope: RopeTables | None = None,
            ops: llama.LayerOps | None = None, shards: int = 1) -> ModelOutput:
    """Run the model on a batch of token ids [batch, seq]; see `ModelOutput` for what comes back.

    Checks the inputs, runs `llama.forward` (`llama.transformer` under another head), then the head and
    the loss. Inputs may be NumPy arrays (checked on the host, then copied to the model's device once) or
    arrays of the model's own module. `trace`, if a dict, receives every intermediate under the stable
    names of `parity.py`. `rope`: the model's RoPE frequencies, kept on its device; `ops`: its
    `layer_ops` (`Model` passes its own; without them they are made for this call); `shards`: the ranks a
    tensor-parallel model is spread over (its cache holds this rank's key/value heads).
    """
    xp = B.xp_of(params["model"]["embed_tokens"]["weight"])
    cache = past_key_values
    input_ids, attention_mask, position_ids, past, furthest = check_inputs(config, input_ids, attention_mask,
                                                                           position_ids, cache, xp, shards)
    labels = check_head_inputs(config, input_ids, labels, logits_to_keep, past, xp)  # before the cache is written
    if use_cache and cache is None:
        cache = KVCache.allocate(config, input_ids.shape[0], max(input_ids.shape[1], 16),
                                 like=params["model"]["embed_tokens"]["weight"], shards=shards)
    # On the device already, computed once per model (Dynamic NTK and LongRoPE: once per length bucket).
    rope_freqs = (rope or RopeTables(config, xp)).for_positions(position_ids, furthest)
    ops, seen = observed(ops or layer_ops(config, params, xp), trace, output_hidden_states, output_attentions)
    if trace is not None:
        trace["input_ids"] = input_ids
    out = ModelOutput(past_key_values=cache if (use_cache or past_key_values is not None) else None)
    run_with_head(out, (params, config, input_ids, position_ids, attention_mask, cache, rope_freqs, ops), labels,
                  logits_to_keep, xp)
    if trace is not None and config.head == "causal_lm":
        trace["logits"] = out.logits
    collect_outputs(out, seen, config.num_hidden_layers, output_hidden_states, output_attentions)
    return out


def check_head_inputs(config: LlamaConfig, input_ids, labels, logits_to_keep, past: int, xp):
    """What the head and the attention need of the inputs: a pad id to classify a batch, valid labels,
    and an attention matrix that fits in memory. Returns the labels (checked, for a causal LM)."""
    b, s = input_ids.shape
    if config.head == "sequence_classification" and config.pad_token_id is None and b != 1:
        raise InputError("sequence classification of a batch needs a pad_token_id in the config")
    if labels is not None and config.head == "causal_lm":
        labels = check_labels(labels, logits_to_keep, b, s, xp, config.vocab_size)
    check_attention_memory(config, b, s, past, xp)
    return labels


def run_with_head(out: ModelOutput, args: tuple, labels, logits_to_keep, xp) -> None:
    """The book's `forward` for a causal LM (its logits and loss); `transformer` and then the classifier, or
    nothing, under the other heads. `args` are `llama.transformer`'s; fills `out`."""
    params, config, input_ids = args[:3]
    if config.head == "causal_lm":
        out.logits = llama.forward(*args, logits_to_keep=logits_to_keep)  # [b, s_kept, V]
        out.loss = None if labels is None else losses.causal_lm_loss(out.logits, labels)
        return
    x = llama.transformer(*args)  # [b, s, D], after the final norm
    if config.head == "base":
        out.extras["last_hidden_state"] = x
        return
    out.logits = heads.sequence_classification_logits(params, x, input_ids, config.pad_token_id)
    out.loss = None if labels is None else losses.classification_loss(out.logits, xp.asarray(labels), config)


def observed(ops: llama.LayerOps, trace: dict | None, hidden_states: bool, attentions: bool):
    """`ops` with an observer that records what was asked for (a trace, hidden states, attentions), and the
    dict it records into; `ops` itself when nothing was asked for."""
    if trace is None and not hidden_states and not attentions:
        return ops, {}
    wanted = None if trace is not None else ({"embed_tokens", "output", "norm"} if hidden_states else set()) | (
        {"self_attn.probs"} if attentions else set())
    seen = trace if trace is not None else {}
    return dataclasses.replace(ops, observe=recorder(seen, wanted)), seen


def collect_outputs(out: ModelOutput, seen: dict, n_layers: int, hidden_states: bool, attentions: bool) -> None:
    """transformers' `hidden_states` (the embedding output, then each layer's, the last one after the final
    norm) and `attentions` (each layer's probabilities [b, h, s, t]) from what the observer recorded."""
    if hidden_states:
        layers = [seen[f"layers.{i}.output"] for i in range(n_layers - 1)]
        out.hidden_states = (seen["embed_tokens"], *layers, seen["norm"])
    if attentions:
        out.attentions = tuple(seen[f"layers.{i}.self_attn.probs"] for i in range(n_layers))


def check_labels(labels, logits_to_keep, b: int, s: int, xp, vocab_size: int | None = None):
    """Labels for the causal-LM loss: the shape of input_ids, ids in the vocabulary or -100 (ignored),
    and logits kept for every position."""
    labels = xp.asarray(labels)
    if labels.shape != (b, s):
        raise InputError(f"labels must have the shape of input_ids {(b, s)}, got {tuple(labels.shape)}")
    if vocab_size is not None and labels.size:
        bad = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
        if bool(bad.any()):
            where = tuple(int(i) for i in xp.argwhere(bad)[0])
            raise InputError(f"label {int(labels[where])} at position {where} is outside the vocabulary "
                             f"[0, {vocab_size}) and is not -100 (ignored)")
    if isinstance(logits_to_keep, (int, np.integer)):
        kept = s if logits_to_keep == 0 else min(int(logits_to_keep), s)
    else:
        kept = len(logits_to_keep)
    if kept != s:
        raise InputError("labels need logits for every position: use logits_to_keep=0 with labels")
    return labels


def check_attention_memory(config: LlamaConfig, b: int, s: int, past: int, xp=np) -> None:
    """Refuse, before allocating it, an attention matrix [batch, heads, seq, past + seq] (float32) that
    alone would not fit in the memory available now."""
    need = b * config.num_attention_heads * s * (past + s) * 4
    if need < 2**30:
        return  # under 1 GiB: not worth a look at /proc
    free = B.available_memory(xp)
    if free is not None and need > free:
        raise InputError(f"input_ids of shape {(b, s)} (after {past} cached positions) needs an attention matrix "
                         f"[batch, heads, seq, past + seq] = {(b, config.num_attention_heads, s, past + s)} of "
                         f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB available; the model's "
                         f"context is {config.max_position_embeddings}: give fewer tokens or a smaller batch")


@dataclass
class Model:
    """A loaded model: `params` (nested dict of arrays, HF names) and `config`. Call it like HF's."""

    params: dict
    config: LlamaConfig
    backend: str = "numpy"
    dtype: str = "float32"
    source: str = ""
    generation_config: dict = field(default_factory=dict)
    quantize: str | None = None  # "int8" or "int4": the layers' linear weights are QuantizedWeights
    fused: bool = True  # on CuPy: the pointwise steps as fused kernels (`fused.py`)

    xp: Any = field(default=None, repr=False)  # numpy or cupy: resolved once, from `backend`
    rope: RopeTables | None = field(default=None, repr=False)  # RoPE frequencies on the device, made once
    ops: llama.LayerOps | None = field(default=None, repr=False)  # the variants' operations, chosen once
    comm: Any = field(default=None, repr=False)  # tensor parallelism: this rank's communicator (`distributed.py`)

    def __post_init__(self):
        if self.xp is None:
            self.backend = B.resolve_backend(self.backend)
            self.xp = B.get_module(self.backend)
        if self.rope is None:
            self.rope = RopeTables(self.config, self.xp)
        if self.ops is None:
            self.ops = layer_ops(self.config, self.params, self.xp, self.fused, self.comm)

    @property
    def shards(self) -> int:
        """How many ranks this model is spread over (1: it is whole in this process)."""
        return 1 if self.comm is None else self.comm.size

    def as_input(self, ids, name: str = "input_ids"):
        """Python lists, NumPy or CuPy arrays -> a [batch, seq] integer array: NumPy, or already on this
        model's device. Host data stays on the host here: `forward` checks it there, then copies it up once."""
        if B.is_cupy_array(ids) and self.xp is np:
            ids = B.to_numpy(ids)
        if not hasattr(ids, "ndim"):
            try:
                ids = np.asarray(ids)
            except ValueError as e:  # ragged nested lists
                raise InputError(f"{name} must be a rectangular list of token ids: {e}") from None
        if ids.ndim == 1:
            ids = ids[None]
        if ids.size and ids.dtype.kind not in "iu":
            raise InputError(f"{name} must be integers, got dtype {ids.dtype}")
        return ids

    def __call__(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                 use_cache: bool = False, output_hidden_states: bool = False, output_attentions: bool = False,
                 labels=None, logits_to_keep: int | Sequence[int] = 0) -> ModelOutput:
        ids = self.as_input(input_ids)
        mask = None if attention_mask is None else self.as_input(attention_mask, "attention_mask")
        pos = None if position_ids is None else self.as_input(position_ids, "position_ids")
        if labels is not None and self.config.head == "causal_lm":
            labels = self.as_input(labels, "labels")
        elif labels is not None:
            labels = self.xp.asarray(labels)
        return forward(self.params, self.config, ids, mask, pos, past_key_values, use_cache,
                       output_hidden_states, output_attentions, labels, logits_to_keep, rope=self.rope, ops=self.ops,
                       shards=self.shards)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True, seed: int | None = None):
        """Grow (or cut) the vocabulary to `new_num_tokens` rows, as transformers' method of that name.

        Resizes the embedding and the LM head (a tied or shared head stays one array), then sets
        `config.vocab_size`; returns the new embedding matrix. Old rows are kept bit for bit; new rows
        are drawn as `resize.resize_rows` explains. `pad_to_multiple_of` rounds the count up;
        `new_num_tokens=None` with it pads the current vocabulary. `seed` (our addition; transformers
        uses torch's global generator) makes the new rows reproducible. As in transformers, the rows
        of an added pad token are drawn like any other (not zeroed): set `config.pad_token_id` to it.
        """
        from .formats.hf_writer import round_to_storage
        from .resize import resize_rows, resized_num_tokens

        self.check_whole("resize_token_embeddings")
        c, m = self.config, self.params["model"]
        embed = m["embed_tokens"]["weight"]
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embed
        for name, v in (("new_num_tokens", new_num_tokens), ("pad_to_multiple_of", pad_to_multiple_of)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0):
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        n = resized_num_tokens(embed.shape[0], new_num_tokens and int(new_num_tokens),
                               pad_to_multiple_of and int(pad_to_multiple_of))
        for name in ("pad_token_id", "bos_token_id"):  # validated ids: cut rows must not hold them
            token = getattr(c, name)
            if token is not None and token >= n:
                raise InputError(f"new_num_tokens={n} would cut the row of config.{name} = {token}: "
                                 f"change config.{name} first")
        rng = np.random.default_rng(seed)
        round_rows = partial(round_to_storage, config=c)  # a bfloat16 checkpoint held as float32 gets bfloat16 rows
        m["embed_tokens"]["weight"] = resize_rows(embed, n, mean_resizing, c.initializer_range, rng, round_rows)
        if c.head == "causal_lm":
            head = self.params["lm_head"]
            head["weight"] = (m["embed_tokens"]["weight"] if c.lm_head_is_embedding else
                              resize_rows(head["weight"], n, mean_resizing, c.initializer_range, rng, round_rows))
        self.config = dataclasses.replace(c, vocab_size=n)  # a new config: one shared with another model stays
        return m["embed_tokens"]["weight"]

    def save_pretrained(self, save_directory: str | Path, max_shard_size: int | str = "50GB",
                        safe_serialization: bool = True) -> Path:
        """Write this model as a Hugging Face checkpoint directory (see `formats.hf_writer.save_pretrained`)."""
        from .formats.hf_writer import save_pretrained

        self.check_whole("save_pretrained")
        return save_pretrained(self, save_directory, max_shard_size, safe_serialization)

    def check_whole(self, what: str) -> None:
        """Refuse `what` on a model spread over ranks: each holds slices, not the checkpoint."""
        if self.comm is not None:
            raise InputError(f"{what} needs the whole model, and this one is spread over {self.shards} ranks "
                             f"(tensor_parallel): load it in one process for {what}")

    def _unique_tensors(self) -> list:
        """Every parameter array once: a tied head is the embedding's own array, counted once."""
        return list({id(arr): arr for arr in flatten(self.params).values()}.values())

    def num_parameters(self) -> int:
        """How many parameters the model holds; a QuantizedWeight counts the weights it stands for."""
        return sum(math.prod(arr.shape) for arr in self._unique_tensors())

    def get_memory_footprint(self) -> int:
        """Bytes the parameters take as stored: quantized weights as their codes, scales and zero points.
        (HF's method of this name also counts buffers, such as RoPE's inverse frequencies.)"""
        return sum(int(arr.nbytes) for arr in self._unique_tensors())


def build_model(config: LlamaConfig, tensors: Mapping[str, np.ndarray], backend: str | None = None,
                dtype: str = "float32", source: str = "checkpoint", progress=None, quantize: str | None = None,
                group_size: int | None = None, fused: bool = True, comm=None, packed: bool = True) -> Model:
    """A Model from a config and HF-named tensors (from safetensors, GGUF, or built in memory).

    quantize: None, "int8" or "int4" (`quantize.py`: torchao's int8_weight_only / int4_weight_only, with
    `group_size` inputs per int4 scale; None: per weight, the largest of 128, 64, 32 dividing its input).
    fused: on CuPy, run the pointwise steps as fused kernels (`fused.py`).
    comm: this rank's communicator (`distributed.py`); the tensors are then its slices.
    packed: q/k/v and gate/up weights as row views of one matrix per group, one product each (`packing.py`).
    """
    Q.check_arguments(quantize, group_size)  # before any tensor is converted
    name = B.resolve_backend(backend)
    xp = B.get_module(name)
    if xp is np:
        B.keep_freed_memory()  # every forward reuses the last one's memory instead of faulting it in anew
    slicing = None
    if comm is not None:
        from .distributed import rank_slicing

        slicing = rank_slicing(comm)
    params = build_params(tensors, config, dtype, xp, source, progress, slicing)
    if quantize:
        params = Q.quantize_params(params, quantize, group_size)
    elif packed:
        packing.pack_projections(params)
    return Model(params=params, config=config, backend=name, dtype=dtype, source=source, quantize=quantize, fused=fused,
                 xp=xp, comm=comm)


def load(path: str | Path, backend: str | None = None, dtype: str = "float32", progress: bool = False,
         quantize: str | None = None, group_size: int | None = None, fused: bool = True,
         adapter: str | Path | None = None, tensor_parallel=None, packed: bool = True) -> Model:
    """Load a Hugging Face checkpoint directory (config.json + safetensors), a GGUF file, or Meta's
    original checkpoint directory (params.json + consolidated.*.pth, read without torch).

    backend: "numpy" or "cupy" (default: $TINYLLAMA_BACKEND, else numpy). dtype: the compute dtype.
    quantize: None, "int8" or "int4" weight-only quantization of the layers' linear weights (`quantize.py`);
    group_size: int4's inputs per scale (None: per weight, the largest of 128, 64, 32 dividing its input).
    fused: on CuPy, the pointwise steps as fused kernels (`fused.py`); False runs the book's functions there.
    adapter: a PEFT LoRA adapter directory, merged into the weights before they are converted (`lora.py`).
    tensor_parallel: "mpi" inside `mpirun -n N`: this process is one of N ranks, reads only its slices
    and computes with the others (`tensor_parallel.py`, `distributed.py`); the logits come whole on every rank.
    packed: q/k/v and gate/up as one matrix per group, one product each (`packing.py`); False: one per weight.
    """
    Q.check_arguments(quantize, group_size)  # before any tensor is read (a GGUF file's are decoded as they are)
    path = Path(path).expanduser()
    bar = _progress_bar if progress else None
    comm = slicing = None
    if tensor_parallel is not None:
        from .distributed import communicator, rank_slicing

        if adapter is not None:
            raise ValueError("an adapter cannot be merged into one rank's slices: merge it first (tinyllama-ref "
                             "finetune --merge, or tl.load(..., adapter=...).save_pretrained), then load that")
        if quantize == "int8":  # int4's groups fall inside a rank's columns, and its codes equal one process's
            raise ValueError("quantize='int8' scales each whole row of o_proj and down_proj, which no rank holds "
                             "(each has its columns): use quantize='int4', or no quantization, with tensor_parallel")
        comm = communicator(tensor_parallel, B.get_module(backend))
        slicing = rank_slicing(comm)
    from .formats.paths import GGUF, HF_DIR, META_DIR, what_path_holds

    kind = what_path_holds(path)  # "model not found: ..." for a missing path
    read = None  # GGUF and Meta's checkpoints: converted to HF names and layouts as they load
    if kind == GGUF:
        from .formats.gguf import read_gguf as read
    elif kind == META_DIR:
        from .formats.meta import read_meta_checkpoint as read
    if read is not None:
        config_dict, tensors, _ = read(path, slicing=slicing)
        config = LlamaConfig.from_dict(config_dict, source=str(path))
        tensors = tensors if adapter is None else apply_adapter(tensors, adapter, dtype)
        model = build_model(config, tensors, backend, dtype, str(path), bar, quantize, group_size, fused, comm,
                        packed)
        model.generation_config = {k: config_dict[k] for k in ("bos_token_id", "eos_token_id")
                                   if config_dict.get(k) is not None}
        return model
    if kind != HF_DIR:
        raise FileNotFoundError(f"{path} is neither a checkpoint directory nor a .gguf file")
    config = LlamaConfig.from_json(path / "config.json")
    if slicing is not None:
        slicing.check(config.to_dict())
    tensors = read_checkpoint_tensors(path, slicing)
    tensors = tensors if adapter is None else apply_adapter(tensors, adapter, dtype)
    model = build_model(config, tensors, backend, dtype, str(path), bar, quantize, group_size, fused, comm,
                        packed)
    gen = path / "generation_config.json"
    if gen.is_file():
        try:
            generation_config = json.loads(gen.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON
            raise ConfigError(f"{gen}: not valid JSON ({e})") from None
        model.generation_config = check_generation_config(generation_config, str(gen))
    return model


def _progress_bar(items, total: int):
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc="loading tensors", unit="tensor", leave=False)
