"""What sits on top of the final RMSNorm, as the checkpoint's `architectures` names it.

- `LlamaForCausalLM`: next-token logits, $x W_\text{lm}^\top$, for all positions or only those asked
  for (`logits_to_keep`): `llama.lm_head`, part of the book's `forward`;
- `LlamaForSequenceClassification`: a score per class read at each row's last real token
  (`sequence_classification_logits`);
- `LlamaModel`: no head, the hidden states themselves.
"""
from __future__ import annotations

import numpy as np

from .backend import xp_of
from .llama import linear


def last_non_pad(input_ids, pad_token_id: int | None):
    """Index of the last token that is not padding, per row (transformers' rule); the last one without a pad id."""
    xp = xp_of(input_ids)
    b, s = input_ids.shape
    if pad_token_id is None:
        return xp.full((b,), s - 1)
    non_pad = (input_ids != pad_token_id).astype(np.int64)
    return (xp.arange(s) * non_pad).argmax(axis=-1)


def sequence_classification_logits(params: dict, x, input_ids, pad_token_id: int | None):
    """[b, s, D] -> [b, num_labels]: the `score` projection at each row's last real token."""
    logits = linear(x, params["score"])  # [b, s, num_labels]
    return logits[xp_of(x).arange(x.shape[0]), last_non_pad(input_ids, pad_token_id)]
