"""The KV cache: keys and values of every layer for the tokens seen so far, so each new token costs one step.

Without it, generating token n+1 would recompute the keys and values of all n tokens before it.
The buffers are preallocated and written in place (as transformers' static cache is), and grow
by doubling when a step needs more room, so decoding copies the past only O(log n) times.
"""
from __future__ import annotations

from dataclasses import dataclass

from .backend import xp_of


@dataclass
class KVCache:
    """keys[l], values[l]: [batch, kv_heads, capacity, head_dim] per layer l; slots [0, length) are filled.

    `signature` = (layers, kv_heads, head_dim) of the model that made it: a cache from another
    model is refused.
    """

    keys: list
    values: list
    length: int = 0
    signature: tuple = ()

    @classmethod
    def allocate(cls, config, batch: int, capacity: int, like, shards: int = 1) -> "KVCache":
        """Zeroed buffers for `capacity` tokens, of the dtype and array module of `like`. A tensor-parallel
        rank, one of `shards`, caches its own key/value heads: 1/shards of them (`tensor_parallel.py`)."""
        xp = xp_of(like)
        signature = cache_signature(config, shards)
        shape = (batch, signature[1], capacity, config.head_dim)
        n = config.num_hidden_layers
        return cls(keys=[xp.zeros(shape, dtype=like.dtype) for _ in range(n)],
                   values=[xp.zeros(shape, dtype=like.dtype) for _ in range(n)],
                   signature=signature)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    def get_seq_length(self) -> int:
        """The number of tokens cached (transformers' name)."""
        return self.length

    def update(self, layer: int, k, v):
        """Append one layer's new keys/values [b, g, s, d] after the cached ones; return that layer's [b, g, t, d].

        Every layer writes at slots [length, length + s). The cache owns its length: a step counts
        once its last layer has written, so a forward that fails half-way leaves the length as it was.
        """
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            self.grow(end)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        if layer == len(self.keys) - 1:
            self.length = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def grow(self, needed: int) -> None:
        """Reallocate every layer's buffers to at least `needed` slots (doubling), keeping the filled ones."""
        new_cap = max(needed, 2 * self.capacity)
        xp = xp_of(self.keys[0])
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                b, g, _, d = old.shape
                new = xp.zeros((b, g, new_cap, d), dtype=old.dtype)
                new[:, :, :self.length] = old[:, :, :self.length]
                store[i] = new


def cache_signature(config, shards: int = 1) -> tuple:
    """(layers, kv_heads, head_dim): what a cache must match to be used with a model (kv_heads: a rank's own,
    one of `shards`)."""
    return (config.num_hidden_layers, config.num_key_value_heads // shards, config.head_dim)
