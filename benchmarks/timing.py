"""The timing loop both benchmark scripts share: prefill the prompt, then greedy decoding, one token per step."""
from __future__ import annotations

import time

PREFILL_REPEATS = 3  # best of a few: one timing on a shared machine is noise


def last_position(out):
    """(logits of the last position of row 0, the cache) from our ModelOutput or transformers' output."""
    return out.logits[0, -1], out.past_key_values


def time_greedy(prefill, step, new_tokens: int, repeats: int = PREFILL_REPEATS):
    """(best prefill seconds, decode seconds, the greedy tokens, the prefill's last-position logits).

    prefill() -> (last-position logits, cache); step(token, cache) -> the same for one more token.
    Each timed call ends by reading the chosen id back to the host (`int(argmax)`), so on a GPU the
    clock stops only once the device has finished.
    """
    prefill_s = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits, cache = prefill()
        token = int(logits.argmax())
        prefill_s = min(prefill_s, time.perf_counter() - t0)
    prompt_logits, tokens = logits, [token]
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits, cache = step(tokens[-1], cache)
        tokens.append(int(logits.argmax()))
    return prefill_s, time.perf_counter() - t0, tokens, prompt_logits
