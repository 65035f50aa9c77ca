"""tinyllama_ref: a pure-NumPy (and CuPy) reference implementation of the LLaMA family.

    import tinyllama_ref as tl
    model = tl.load("path/to/checkpoint")          # HF directory or .gguf file
    out = model([[1, 15043, 3186]])               # out.logits: [batch, seq, vocab]
"""
from .backprop import value_and_grad
from .config import ConfigError, LlamaConfig
from .conversation import chat
from .errors import CheckpointError
from .generation import GenerationStats, SamplingParams, generate, generate_batch, stream
from .kv_cache import KVCache
from .mask_view import visualize_mask
from .model import InputError, Model, ModelOutput, build_model, forward, load
from .optim import AdamW, clip_grad_norm, cosine_with_warmup
from .perplexity import perplexity
from .quantize import QuantizationError
from .tokenizer import Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = ["load", "build_model", "forward", "Model", "ModelOutput", "KVCache", "LlamaConfig",
           "ConfigError", "CheckpointError", "InputError", "generate", "stream", "generate_batch",
           "GenerationStats", "SamplingParams", "Tokenizer", "load_tokenizer", "chat",
           "visualize_mask", "perplexity", "QuantizationError", "value_and_grad", "AdamW", "clip_grad_norm",
           "cosine_with_warmup"]
