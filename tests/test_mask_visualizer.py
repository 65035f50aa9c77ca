"""The attention-mask picture (tinyllama_ref/mask_view.py) against transformers, the model, and a golden text.

The boolean mask drawn is the model's own (`llama.attention_mask_bias`); here it must equal the mask
transformers builds (`masking_utils.create_causal_mask`, what `AttentionMaskVisualizer` calls) for a
causal prompt, a left-padded batch, a KV cache, and padding with a cache; and the bundled model's
attention probabilities must be zero exactly where the picture shows ⬚.
"""
import re

import numpy as np
import pytest

import tinyllama_ref as tl
from conftest import needs_transformers
from tinyllama_ref.cli import main
from tinyllama_ref.mask_view import visible_keys, visualize_mask

from test_bundled_model import BUNDLED

# (attention_mask over cached + new tokens, past): one causal prompt, a left-padded batch, a cache, both
CASES = {
    "causal": ([[1, 1, 1, 1, 1]], 0),
    "left-padding": ([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], 0),
    "cache": ([[1, 1, 1, 1, 1, 1]], 4),
    "left-padding+cache": ([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], 3),
    "decode step": ([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], 5),
}


@pytest.fixture(scope="module")
def tokenizer():
    return tl.load_tokenizer(BUNDLED)


@pytest.fixture(scope="module")
def model():
    return tl.load(BUNDLED)


@pytest.fixture(scope="module")
def torch():
    return needs_transformers("the comparison with transformers' masks")[0]


def hf_visible(torch, attention_mask: np.ndarray, past: int) -> np.ndarray:
    """transformers' mask [b, s, t] (True = may attend), made as AttentionMaskVisualizer makes it (eager)."""
    from transformers import DynamicCache, LlamaConfig
    from transformers.masking_utils import create_causal_mask

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = "eager"
    b, t = attention_mask.shape
    cache = None
    if past:
        cache = DynamicCache(config=config)
        for layer in range(config.num_hidden_layers):  # `past` keys and values already written
            cache.update(torch.zeros(b, 2, past, 4), torch.zeros(b, 2, past, 4), layer)
    mask = create_causal_mask(config=config, inputs_embeds=torch.zeros(b, t - past, config.hidden_size),
                              attention_mask=torch.tensor(attention_mask), cache=cache,
                              allow_is_causal_skip=False)
    return (~mask.to(torch.bool))[:, 0].numpy()  # the visualizer's reading: a non-zero bias is masked


@pytest.mark.live
@pytest.mark.parametrize("case", CASES)
def test_mask_equals_transformers(case, torch):
    attention_mask, past = CASES[case]
    attention_mask = np.array(attention_mask)
    ours = visible_keys(attention_mask, past)
    theirs = hf_visible(torch, attention_mask, past)
    assert ours.shape == theirs.shape == (attention_mask.shape[0], attention_mask.shape[1] - past,
                                          attention_mask.shape[1])
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("case", CASES)
def test_the_model_attends_where_the_picture_says(case, model):
    """Probabilities of the bundled model: 0 on every ⬚ of a row that has a ■, positive on every ■."""
    attention_mask, past = CASES[case]
    attention_mask = np.array(attention_mask)
    b, t = attention_mask.shape
    ids = np.arange(3, 3 + b * t).reshape(b, t)
    cache = None
    if past:
        cache = model(ids[:, :past], attention_mask=attention_mask[:, :past], use_cache=True).past_key_values
    out = model(ids[:, past:], attention_mask=attention_mask, past_key_values=cache, output_attentions=True)
    visible = visible_keys(attention_mask, past)[:, None]  # [b, 1, s, t], over the heads
    for probs in out.attentions:
        probs = np.asarray(probs)
        live_rows = np.broadcast_to(visible.any(-1, keepdims=True), probs.shape)
        assert (probs[np.broadcast_to(visible, probs.shape)] > 0).all()
        assert (probs[live_rows & ~np.broadcast_to(visible, probs.shape)] == 0).all()


GOLDEN = """\
Attention mask of llama (kjv-llama), text 1 of 1: 5 tokens; 1 padding on the left (attention_mask 0); \
2 in the KV cache (keys 0 '<pad>', 1 '<s>')
 ■: may attend   ⬚: masked   (row: a query, column: a key)
             Attention Matrix
             0 1 | 2 3 4 5
'▁Let'  :  2 ⬚ ■ | ■ ⬚ ⬚ ⬚
'▁there':  3 ⬚ ■ | ■ ■ ⬚ ⬚
'▁be'   :  4 ⬚ ■ | ■ ■ ■ ⬚
'▁light':  5 ⬚ ■ | ■ ■ ■ ■"""


def test_golden_picture(model, tokenizer):
    """A fixed small case, character for character: one pad column, two cached keys, four new queries."""
    assert visualize_mask(model, tokenizer, "Let there be light", past=2, pad_left=1) == GOLDEN


def rows_of(picture: str) -> list[tuple[str, int, str]]:
    """(label, slot, squares) of each grid row."""
    return [(m[1], int(m[2]), m[3]) for m in re.finditer(r"^'(.*?)'\s*:\s+(\d+) (.*)$", picture, re.M)]


def test_batch_rows_and_labels(model, tokenizer):
    picture = visualize_mask(model, tokenizer, ["In the beginning", "God"])
    grids = picture.split("\n\n")
    assert len(grids) == 2 and "text 1 of 2" in grids[0] and "text 2 of 2" in grids[1]
    first, second = rows_of(grids[0]), rows_of(grids[1])
    pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode("In the beginning")]
    assert [r[0] for r in first] == pieces and [r[1] for r in first] == list(range(len(pieces)))
    n_pad = len(pieces) - 2  # "God" is <s> ▁God
    assert [r[0] for r in second] == ["<pad>"] * n_pad + ["<s>", "▁God"]
    assert all(set(r[2].split()) == {"⬚"} for r in second[:n_pad])  # padding sees nothing
    assert second[-1][2].split() == ["⬚"] * n_pad + ["■", "■"]  # padded columns blocked


def test_cache_adds_columns(model, tokenizer):
    n = len(tokenizer.encode("In the beginning God"))
    picture = visualize_mask(model, tokenizer, "In the beginning God", past=3)
    rows = rows_of(picture)
    assert [r[1] for r in rows] == list(range(3, n))  # one row per new token, at its cache slot
    for slot, (_, _, squares) in zip(range(3, n), rows):
        cached, new = squares.split(" | ")
        assert cached.split() == ["■"] * 3  # every cached key is visible
        assert new.split() == ["■"] * (slot - 3 + 1) + ["⬚"] * (n - 1 - slot)
    assert "3 in the KV cache (keys 0 '<s>', 1 '▁In', 2 '▁the')" in picture


@pytest.mark.live
def test_rows_as_transformers_draws_them(model, tokenizer, torch):
    """The squares of each row equal those transformers' own drawing function prints for the same mask."""
    pytest.importorskip("PIL", reason="transformers' attention_visualizer imports PIL")
    from transformers.utils.attention_visualizer import generate_attention_matrix_from_mask

    text = "In the beginning God created"
    pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode(text)]
    theirs = generate_attention_matrix_from_mask(pieces, torch.tensor(hf_visible(torch, np.ones((1, len(pieces)),
                                                                                                 int), 0)))
    theirs = re.sub(r"\033\[\d+m", "", theirs)
    theirs = [line.split("    |")[0] for line in theirs.splitlines()]  # without the sliding-window half
    ours = visualize_mask(model, tokenizer, text, color=True)
    assert rows_of(re.sub(r"\033\[\d+m", "", ours)) == rows_of("\n".join(theirs))
    assert "\033[92m■\033[0m" in ours  # the diagonal in green, as theirs


def test_cli_mask(capsys):
    assert main(["mask", "In the beginning", "God", "--past", "2", "--pad-left", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("Attention Matrix") == 2 and "2 in the KV cache" in out
    assert main(["mask", "God", "--past", "5"]) == 1
    assert "past = 5 leaves no new token" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="God", past=2), "past = 2 leaves no new token"),
    (dict(text="God", pad_left=-1), "pad_left must be a non-negative integer"),
    (dict(text="", past=0), "encodes to no tokens"),
])
def test_errors(model, tokenizer, kwargs, message):
    tokenizer_no_bos = tl.load_tokenizer(BUNDLED)
    tokenizer_no_bos.add_bos = False
    with pytest.raises(ValueError, match=re.escape(message)):
        visualize_mask(model, tokenizer_no_bos, **kwargs)
    with pytest.raises(TypeError, match="Model or a LlamaConfig"):
        visualize_mask("llama", tokenizer, "God")
