"""The model configuration: every field of Hugging Face's `LlamaConfig` and `OpenLlamaConfig`.

A checkpoint's `config.json` is read into one flat dataclass. Both spellings of the rotary
settings are accepted: the older `rope_theta` + `rope_scaling` ({"type"|"rope_type": ..., "factor": ...})
and the newer `rope_parameters` ({"rope_type": ..., "rope_theta": ..., ...}) that transformers 5.x writes.
Invalid values raise `ConfigError`, which names the field.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
ACTIVATIONS = ("silu", "swish", "relu", "gelu", "gelu_new", "gelu_pytorch_tanh")
CAUSAL_LM_HEADS = ("LlamaForCausalLM", "OpenLlamaForCausalLM")
CLASSIFICATION_HEADS = ("LlamaForSequenceClassification", "OpenLlamaForSequenceClassification")
BASE_MODELS = ("LlamaModel", "OpenLlamaModel")
MODEL_TYPES = ("llama", "open-llama", "open_llama")

# The rope parameters each type needs (beyond rope_type and rope_theta), as transformers validates them.
_ROPE_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


class ConfigError(ValueError):
    """A config value that the model cannot run with; the message names the field."""


@dataclass
class LlamaConfig:
    """Hyper-parameters of a LLaMA / Llama-2 / Open-Llama model (defaults: LLaMA-7B, as in transformers)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: as many as query heads (plain multi-head attention)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int = 1
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # normalised: always has "rope_type"; None means default RoPE
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    # Open-Llama only (OpenLlamaConfig in transformers 4.x)
    use_stable_embedding: bool = False
    shared_input_output_embedding: bool = False
    use_memory_efficient_attention: bool = False
    hidden_dropout_prob: float = 0.0
    attention_dropout_prob: float = 0.0
    # Which model and head the checkpoint holds
    model_type: str = "llama"
    architectures: list[str] = field(default_factory=lambda: ["LlamaForCausalLM"])
    num_labels: int = 2
    problem_type: str | None = None
    torch_dtype: str | None = None  # the dtype the checkpoint was saved in (informational)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)
        validate(self)

    # -- derived quantities -------------------------------------------------------------
    @property
    def rope_type(self) -> str:
        return self.rope_scaling["rope_type"] if self.rope_scaling else "default"

    @property
    def rope_parameters(self) -> dict:
        """The rotary settings in transformers 5.x form: {"rope_type", "rope_theta", ...}."""
        params = {"rope_type": "default", "rope_theta": self.rope_theta}
        params.update(self.rope_scaling or {})
        if params["rope_type"] in ("yarn", "longrope", "llama3"):
            params.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        return params

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head (1 for MHA, num_attention_heads for MQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def is_open_llama(self) -> bool:
        return self.model_type in ("open-llama", "open_llama")

    @property
    def head(self) -> str:
        """"causal_lm", "sequence_classification" or "base", from `architectures`."""
        arch = (self.architectures or ["LlamaForCausalLM"])[0]
        if arch in CLASSIFICATION_HEADS:
            return "sequence_classification"
        if arch in BASE_MODELS:
            return "base"
        return "causal_lm"

    @property
    def lm_head_is_embedding(self) -> bool:
        """True when the output projection reuses the token embedding matrix (tied or shared)."""
        if self.is_open_llama:
            return self.shared_input_output_embedding
        return self.tie_word_embeddings

    # -- (de)serialisation ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "LlamaConfig":
        """Build from a `config.json` dict (either rope spelling; unknown keys are ignored)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        model_type = d.get("model_type", "llama")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"{source}: field 'model_type' is {model_type!r}; supported: {', '.join(MODEL_TYPES)}")
        if model_type != "llama":
            # OpenLlamaConfig's defaults differ from LlamaConfig's where the file is silent.
            d.setdefault("use_stable_embedding", True)
            d.setdefault("shared_input_output_embedding", True)
            d.setdefault("pad_token_id", 0)
            d.setdefault("use_memory_efficient_attention", d.pop("use_memorry_efficient_attention", True))
            d.setdefault("architectures", ["OpenLlamaForCausalLM"])
        rope_parameters = d.pop("rope_parameters", None)
        if rope_parameters is not None:
            if not isinstance(rope_parameters, dict):
                raise ConfigError(f"{source}: field 'rope_parameters' must be an object, got {rope_parameters!r}")
            rope_parameters = dict(rope_parameters)
            if "rope_theta" in rope_parameters:
                d["rope_theta"] = rope_parameters.pop("rope_theta")
            d["rope_scaling"] = rope_parameters
        if "dtype" in d and "torch_dtype" not in d:
            d["torch_dtype"] = d["dtype"]
        if "id2label" in d and "num_labels" not in d:
            d["num_labels"] = len(d["id2label"])
        if d.get("pretraining_tp") is None:
            d["pretraining_tp"] = 1
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for name in POSITIVE_INT_FIELDS:  # checked first: __post_init__ computes with some of them
            v = kwargs.get(name)
            if name in kwargs and not (name in ("head_dim", "num_key_value_heads") and v is None) \
                    and (type(v) is not int or v <= 0):
                raise ConfigError(f"{source}: field '{name}' must be a positive integer, got {v!r}")
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, ArithmeticError) as e:
            raise ConfigError(f"{source}: a field holds a value of the wrong kind ({type(e).__name__}: {e})") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "LlamaConfig":
        """Read a `config.json` file; a missing or malformed file is an error naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """A `config.json` dict that transformers reads back (rope written in both spellings)."""
        d = dataclasses.asdict(self)
        if self.model_type == "llama":
            for k in ("use_stable_embedding", "shared_input_output_embedding", "use_memory_efficient_attention",
                      "hidden_dropout_prob", "attention_dropout_prob"):
                d.pop(k)
            d["rope_parameters"] = self.rope_parameters
        if d["problem_type"] is None:
            d.pop("problem_type")
        if d["torch_dtype"] is None:
            d.pop("torch_dtype")
        return d


def _normalise_rope_scaling(rs: dict | None) -> dict | None:
    """Accept {"type": ...} (old) or {"rope_type": ...} (new); None or type "default" means no scaling."""
    if rs is None:
        return None
    if not isinstance(rs, dict):
        raise ConfigError(f"field 'rope_scaling' must be an object or null, got {rs!r}")
    rs = dict(rs)
    rope_type = rs.pop("rope_type", None) or rs.pop("type", None) or "default"
    rs.pop("type", None)
    rs = {"rope_type": rope_type, **rs}
    if rope_type == "default" and len(rs) == 1:
        return None
    return rs


POSITIVE_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "max_position_embeddings", "pretraining_tp")


def validate(c: LlamaConfig) -> None:
    """Raise ConfigError naming the first field whose value the model cannot run with."""
    for name in POSITIVE_INT_FIELDS:
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"field '{name}' must be a positive integer, got {v!r}")
    if c.hidden_size % c.num_attention_heads:
        raise ConfigError(f"field 'hidden_size' ({c.hidden_size}) is not divisible by "
                          f"'num_attention_heads' ({c.num_attention_heads})")
    if c.num_attention_heads % c.num_key_value_heads:
        raise ConfigError(f"field 'num_attention_heads' ({c.num_attention_heads}) is not divisible by "
                          f"'num_key_value_heads' ({c.num_key_value_heads})")
    if c.head_dim % 2:
        raise ConfigError(f"field 'head_dim' must be even for rotary embeddings, got {c.head_dim}")
    if c.hidden_act not in ACTIVATIONS:
        raise ConfigError(f"field 'hidden_act' is {c.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
    if not (isinstance(c.rms_norm_eps, (int, float)) and c.rms_norm_eps > 0):
        raise ConfigError(f"field 'rms_norm_eps' must be a positive number, got {c.rms_norm_eps!r}")
    if not (isinstance(c.rope_theta, (int, float)) and c.rope_theta > 0):
        raise ConfigError(f"field 'rope_theta' must be a positive number, got {c.rope_theta!r}")
    for name in ("pad_token_id", "bos_token_id"):
        v = getattr(c, name)
        if v is not None and not (isinstance(v, int) and 0 <= v < c.vocab_size):
            raise ConfigError(f"field '{name}' ({v!r}) is outside [0, vocab_size={c.vocab_size})")
    tp = c.pretraining_tp
    for name, size in (("num_attention_heads*head_dim", c.num_attention_heads * c.head_dim),
                       ("num_key_value_heads*head_dim", c.num_key_value_heads * c.head_dim),
                       ("intermediate_size", c.intermediate_size)):
        if size % tp:
            raise ConfigError(f"field 'pretraining_tp' ({tp}) does not divide {name} ({size})")
    known = CAUSAL_LM_HEADS + CLASSIFICATION_HEADS + BASE_MODELS
    if c.architectures and c.architectures[0] not in known:
        raise ConfigError(f"field 'architectures' is {c.architectures!r}; supported: {', '.join(known)}")
    if c.head == "sequence_classification" and (not isinstance(c.num_labels, int) or c.num_labels < 1):
        raise ConfigError(f"field 'num_labels' must be a positive integer, got {c.num_labels!r}")
    _validate_rope(c)


def _validate_rope(c: LlamaConfig) -> None:
    rs = c.rope_scaling
    if rs is None:
        return
    rope_type = rs["rope_type"]
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"field 'rope_scaling.rope_type' is {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    params = c.rope_parameters
    for key in _ROPE_REQUIRED[rope_type]:
        if params.get(key) is None:
            raise ConfigError(f"field 'rope_scaling.{key}' is required for rope_type {rope_type!r}")
    if params.get("factor") is not None:
        f = params["factor"]
        if not isinstance(f, (int, float)) or isinstance(f, bool) or f <= 0:
            raise ConfigError(f"field 'rope_scaling.factor' must be a positive number, got {f!r}")
    if rope_type == "longrope":
        half = c.head_dim // 2
        for key in ("short_factor", "long_factor"):
            v = params[key]
            if not isinstance(v, (list, tuple)) or len(v) != half:
                n = len(v) if isinstance(v, (list, tuple)) else v
                raise ConfigError(f"field 'rope_scaling.{key}' must be a list of head_dim/2 = {half} numbers, "
                                  f"got {n!r}")
    if rope_type == "llama3" and params["high_freq_factor"] == params["low_freq_factor"]:
        raise ConfigError("field 'rope_scaling.high_freq_factor' must differ from 'low_freq_factor'")


GENERATION_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")  # the ones used


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


# What each sampling argument must be, in one table: SamplingParams, the CLI's flags and the check of
# generation_config.json all read it, so a value is refused with the same words wherever it comes from.
SAMPLING_RULES = {  # name: (is the value acceptable?, what it must be)
    "max_new_tokens": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "temperature": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "repetition_penalty": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "seed": (lambda v: v is None or _is_int(v) and v >= 0, "a non-negative integer (or None)"),
}


def check_sampling_value(name: str, value):
    """The value, if SAMPLING_RULES accepts it; else a ValueError naming the argument.

    >>> check_sampling_value("temperature", -1.0)
    Traceback (most recent call last):
    ValueError: temperature=-1.0 must be a non-negative number
    """
    ok, what = SAMPLING_RULES[name]
    if not ok(value):
        raise ValueError(f"{name}={value!r} must be {what}")
    return value


def check_generation_config(g, source: str) -> dict:
    """A generation_config.json's contents, checked: an object whose sampling fields are in range (by
    SamplingParams' rules, SAMPLING_RULES) and whose do_sample is true or false."""
    if not isinstance(g, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(g).__name__}")
    rules = {name: SAMPLING_RULES[name] for name in GENERATION_FIELDS}
    rules["do_sample"] = (lambda v: type(v) is bool, "true or false")
    for name, (ok, what) in rules.items():
        if g.get(name) is not None and not ok(g[name]):
            raise ConfigError(f"{source}: field {name!r} must be {what}, got {g[name]!r}")
    return g
