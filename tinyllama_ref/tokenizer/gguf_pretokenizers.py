r"""llama.cpp's pre-tokenizers: how a GGUF byte-level BPE vocabulary cuts text before merging.

A "gpt2" (byte-level BPE) vocabulary names its pre-tokenizer in `tokenizer.ggml.pre`. llama.cpp
(llama-vocab.cpp) maps the name to a pre-tokenizer type, and the type to a list of regexes that run
one after another: each cuts every piece of text at its matches, keeping the matches and the text
between them. Then each piece's UTF-8 bytes are spelled in GPT-2's byte alphabet and merged.

`tinyllama_ref.tokenizer.gguf_vocab` takes the pre-tokenizer from this one table: our tokenizer runs
the regexes itself, and the `tokenizer.json` it saves (`save_pretrained`, `convert`) holds the same
regexes. So a loaded and a saved GGUF vocabulary accept the same names and cut text the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..formats.gguf_file import GGUFError
from .hf_bpe import GPT2_PATTERN


@dataclass(frozen=True)
class PreTokenizer:
    """The regexes applied in order before byte-level BPE, and whether merges are skipped."""
    splits: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is itself a token is taken whole, before any merge


# Llama 3's regex. llama.cpp spells its contractions "(?:'[sS]|'[tT]|...)" because C++'s std::regex
# has no (?i:...); the two differ only where case folding goes beyond ASCII ("'ſ" is "'s" here).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp writes GPT-2's regex without its last "|\s+"; no cut changes, since text that no
# alternative matches stays a piece of its own anyway.
GPT2 = PreTokenizer((GPT2_PATTERN,))
DIGITS_THEN_GPT2 = PreTokenizer((r"\p{N}", GPT2_PATTERN))
LLAMA3 = PreTokenizer((LLAMA3_PATTERN,), ignore_merges=True)
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = PreTokenizer((QWEN2_PATTERN,))
# Falcon: runs of punctuation (backquote included), GPT-2's regex, runs of 3 ASCII digits.
FALCON = PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, r"[0-9][0-9][0-9]"))
# DeepSeek: llama.cpp's rewrite of the tokenizer.json splits; CJK is the ranges 一-龥, ࠀ-一 and 가-퟿.
DEEPSEEK_CODER = PreTokenizer((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"))
# Qwen 3.5: as QWEN2, with combining marks (\p{M}) counted as letters.
QWEN35 = PreTokenizer((r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                       r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",))
DEEPSEEK_LLM = PreTokenizer((
    r"[\r\n]",
    # escapes where a character has a singleton decomposition (U+1F7D ώ, U+1FBE ι, U+2126 Ω, U+212A K...):
    # an NFC-normalizing editor would silently turn them into other characters and break the ranges
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝ"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d"
    r"ℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+"))
DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]"))

# tokenizer.ggml.pre -> pre-tokenizer. Each comment names llama.cpp's type (LLAMA_VOCAB_PRE_TYPE_*).
GGUF_PRE_TOKENIZERS = {
    "default": DEFAULT,             # DEFAULT: runs of punctuation, GPT-2's regex, runs of numbers, runs of 3 digits
    "gpt-2": GPT2,                  # GPT2: GPT-2's regex alone
    "gpt2": GPT2,                   # not a name llama.cpp knows (it would fall back to "default"); read as "gpt-2"
    "starcoder": DIGITS_THEN_GPT2,  # STARCODER: every number character alone, then GPT-2's regex
    "refact": DIGITS_THEN_GPT2,     # REFACT: the regexes of STARCODER
    "command-r": DIGITS_THEN_GPT2,  # COMMAND_R (Command-R): the regexes of STARCODER
    "smollm": DIGITS_THEN_GPT2,     # SMOLLM (SmolLM2): the regexes of STARCODER
    "mpt": GPT2,                    # MPT: GPT-2's regex alone
    "falcon": FALCON,               # FALCON: runs of punctuation, GPT-2's regex, runs of 3 digits
    "qwen2": QWEN2,                 # QWEN2: Llama 3's regex with every number character alone
    "deepseek-coder": DEEPSEEK_CODER,  # DEEPSEEK_CODER: newlines, letters, punctuation, CJK, digits alone
    "qwen35": QWEN35,               # QWEN35: QWEN2's regex, combining marks counted as letters
    "deepseek-llm": DEEPSEEK_LLM,   # DEEPSEEK_LLM: newlines, cased letters, ASCII/CJK punctuation, end spaces, CJK, numbers
    "llama-bpe": LLAMA3,            # LLAMA3 (Llama 3): its own regex; a piece that is a token skips the merges
    "llama3": LLAMA3,               # LLAMA3, another name for it
    "llama-v3": LLAMA3,             # LLAMA3, another name for it
}


def gguf_pre_tokenizer(pre: str | None, source: str = "GGUF") -> PreTokenizer:
    """The pre-tokenizer that a `tokenizer.ggml.pre` value names (None: the file has no such key).

    >>> gguf_pre_tokenizer("llama-bpe").ignore_merges
    True
    """
    if pre not in GGUF_PRE_TOKENIZERS:
        said = "is missing" if pre is None else f"is {pre!r}"
        raise GGUFError(f"{source}: tokenizer.ggml.pre (how text is split before BPE) {said}; supported: "
                        f"{', '.join(sorted(GGUF_PRE_TOKENIZERS))}")
    return GGUF_PRE_TOKENIZERS[pre]
