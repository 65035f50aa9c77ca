"""What every BPE tokenizer here shares: the merge loop, added-token splitting, and byte decoding.

The merge loop is the one in SentencePiece's `bpe_model.cc` (and, with ranks for
priorities, the one in the `tokenizers` library): the symbols sit in a doubly linked
list, every adjacent pair that could merge sits in a heap keyed by (priority, left
position), and we pop the best pair, merge it, and push the two new pairs it forms with
its neighbours. Each merge costs O(log n), so a string of n symbols costs O(n log n),
never the O(n^2) of "rescan the whole string after every merge". Most words are short,
though, and for them that rescan wins: a list of pair priorities scanned by `min` and `index`
runs in C, where the heap's bookkeeping runs in Python (`merge_by_scan`).
"""
from __future__ import annotations

import codecs
import heapq
import math
import re


SHORT_WORD = 32  # symbols up to which merge_by_scan beats the heap (measured: the heap wins from ~48)
NEVER = math.inf  # merge_by_scan's priority for a pair that never merges


def bpe_merge(symbols: list[str], find_merge, frozen: list[bool] | None = None,
              stats: dict | None = None) -> list[str]:
    """Merge adjacent symbols, best pair first, until no adjacent pair can merge.

    find_merge(left, right) -> priority (a number, lower merges first) or None when the pair never
    merges; the merged symbol is always left + right. Ties in priority go to the leftmost pair.
    frozen[i] marks symbols that never merge (SentencePiece's user-defined pieces).
    stats, if given, counts heap pops in stats["pops"] (tests use it to check the work is ~linear).

    >>> ranks = {("a", "b"): 0, ("ab", "c"): 1}
    >>> bpe_merge(list("abcab"), lambda l, r: ranks.get((l, r)))
    ['abc', 'ab']
    """
    if len(symbols) <= SHORT_WORD and stats is None and not (frozen and any(frozen)):
        return merge_by_scan(symbols, find_merge)
    return merge_by_heap(symbols, find_merge, frozen, stats)


def merge_by_scan(symbols: list[str], find_merge) -> list[str]:
    """bpe_merge for a short word: keep each adjacent pair's priority in a list and merge its minimum.

    This equals merge_by_heap, find_merge calls included (UNUSED pieces record their merges
    there). The heap holds every adjacent pair at the moment it forms, plus stale entries that it
    skips, so each pop merges the best (priority, position) pair among the current ones; the
    position it compares keeps the symbols' order, so that is the leftmost best pair, which is
    what min() and index() find here. Both ask find_merge about the initial pairs from left to
    right and, after a merge, about the pair on its left and then the pair on its right.
    Words with frozen symbols (rare) go to the heap: checking them here would cost a tenth.

    >>> ranks = {("a", "a"): 0}
    >>> merge_by_scan(list("aaa"), lambda l, r: ranks.get((l, r)))
    ['aa', 'a']
    """
    sym = list(symbols)
    pri = []  # pri[i]: the priority of the pair sym[i], sym[i + 1]
    for i in range(len(sym) - 1):
        p = find_merge(sym[i], sym[i + 1])
        pri.append(NEVER if p is None else p)
    while pri:
        best = min(pri)
        if best == NEVER:
            break
        i = pri.index(best)  # the leftmost of the best
        sym[i] += sym.pop(i + 1)
        del pri[i]
        # the lookups are written out, not a helper's: a call per pair would cost a tenth of the time
        if i > 0:
            p = find_merge(sym[i - 1], sym[i])
            pri[i - 1] = NEVER if p is None else p
        if i < len(pri):
            p = find_merge(sym[i], sym[i + 1])
            pri[i] = NEVER if p is None else p
    return sym


def merge_by_heap(symbols: list[str], find_merge, frozen: list[bool] | None = None,
                  stats: dict | None = None) -> list[str]:
    """bpe_merge in O(n log n), for long strings (one line of a million "a"s).

    >>> ranks = {("a", "a"): 0}
    >>> merge_by_heap(list("aaa"), lambda l, r: ranks.get((l, r)))
    ['aa', 'a']
    """
    n = len(symbols)
    if n < 2:
        return list(symbols)
    sym = list(symbols)
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1

    def candidate(left: int, right: int):
        # A heap entry remembers the merged length: if either side has grown since, the entry is stale.
        if frozen is not None and (frozen[left] or frozen[right]):
            return None
        priority = find_merge(sym[left], sym[right])
        if priority is None:
            return None
        return (priority, left, right, len(sym[left]) + len(sym[right]))

    heap = [c for c in (candidate(i, i + 1) for i in range(n - 1)) if c is not None]
    heapq.heapify(heap)
    pops = 0
    while heap:
        _, left, right, size = heapq.heappop(heap)
        pops += 1
        a, b = sym[left], sym[right]
        if not a or not b or len(a) + len(b) != size:
            continue  # stale: one side was merged away or grew after this pair was pushed
        sym[left] = a + b
        sym[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        if prev[left] >= 0:
            c = candidate(prev[left], left)
            if c is not None:
                heapq.heappush(heap, c)
        if nxt[left] >= 0:
            c = candidate(left, nxt[left])
            if c is not None:
                heapq.heappush(heap, c)
    if stats is not None:
        stats["pops"] = stats.get("pops", 0) + pops
    return [s for s in sym if s]


WORD_CACHE_LIMIT = 1 << 16  # words remembered per tokenizer before the cache starts over


def encode_words(words, encode_word, cache: dict) -> list[int]:
    """The ids of each word in turn, each word encoded once and then remembered in cache.

    >>> cache = {}; encode_words(["ab", "c", "ab"], lambda w: [len(w)], cache), sorted(cache)
    ([2, 1, 2], ['ab', 'c'])
    """
    ids = []
    for word in words:
        word_ids = cache.get(word)
        if word_ids is None:
            if len(cache) >= WORD_CACHE_LIMIT:
                cache.clear()
            word_ids = cache[word] = encode_word(word)
        ids += word_ids
    return ids


def make_splitter(tokens) -> re.Pattern | None:
    """A regex that finds the given literal tokens, leftmost first and longest first at each position.

    >>> make_splitter(["<s>", "</s>", "<s>x"]).split("a<s>xb</s>")
    ['a', '<s>x', 'b', '</s>', '']
    """
    tokens = sorted(set(tokens), key=lambda t: (-len(t), t))
    if not tokens:
        return None
    return re.compile("(" + "|".join(re.escape(t) for t in tokens) + ")")


def _replace_one_byte(err: UnicodeDecodeError):
    # SentencePiece turns each invalid byte into its own U+FFFD and resumes at the next byte,
    # where Python's "replace" would swallow a whole truncated sequence into one U+FFFD.
    return "\ufffd", err.start + 1


codecs.register_error("tinyllama_ref.one_fffd_per_byte", _replace_one_byte)


def decode_utf8_per_byte(data: bytes) -> str:
    """UTF-8 bytes to text, each invalid byte becoming one U+FFFD (SentencePiece's rule).

    >>> decode_utf8_per_byte(b"\\xe2\\x82A\\xe2\\x82\\xac")   # truncated euro sign, 'A', a whole one
    '\\ufffd\\ufffdA€'
    """
    return data.decode("utf-8", errors="tinyllama_ref.one_fffd_per_byte")
