"""Our own tokenizers, in pure Python: SentencePiece BPE (LLaMA) and byte-level BPE (GPT-2 style).

    >>> from tinyllama_ref.tokenizer import load_tokenizer
    >>> tok = load_tokenizer("path/to/checkpoint")    # doctest: +SKIP
    >>> tok.decode(tok.encode("Hello world"), skip_special_tokens=True)    # doctest: +SKIP
    'Hello world'
"""
from .loaders import load_tokenizer, tokenizer_from_file
from .tokenizer import AddedToken, BatchEncoding, Tokenizer, TokenizerError

__all__ = ["AddedToken", "BatchEncoding", "Tokenizer", "TokenizerError", "load_tokenizer", "tokenizer_from_file"]
