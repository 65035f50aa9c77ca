"""`tinyllama-ref train` and the loop under it (train.py): a real text in, a checkpoint out that tl.load and
transformers both read with equal logits; the data windows, the initial weights and the loop itself."""
import re
from pathlib import Path

import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref.cli import default_model_dir, main
from tinyllama_ref.config import LlamaConfig
from tinyllama_ref.train import TrainSettings, encode_text, fit, initial_tensors, sample_batch

from conftest import needs_transformers

REPO = Path(__file__).resolve().parent.parent
LOGITS_TOL = 1e-5  # float32 logits of the written checkpoint, ours against transformers' (max |Δ|)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    """A real English text: this project's guides, one paragraph per document."""
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "docs" / "guides").glob("*.md")))
    path = tmp_path_factory.mktemp("text") / "guides.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "model"
    code = main(["train", str(text_file), "--out", str(out), "--steps", "6", "--seq-len", "32", "--batch-size", "2"])
    assert code == 0
    return out


def test_train_writes_a_checkpoint_and_ends_with_the_loss(text_file, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", str(text_file), "--out", str(out), "--steps", "4", "--seq-len", "16", "--batch-size",
                 "2", "--seed", "3"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"loss: \d+\.\d{4}", last), last
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
            "training_log.json"} <= names
    model = tl.load(out)
    assert model.config.vocab_size == tl.load(default_model_dir()).config.vocab_size
    assert tl.load_tokenizer(out).encode("In the beginning") == tl.load_tokenizer(default_model_dir()).encode(
        "In the beginning")


@pytest.mark.live
def test_transformers_loads_the_checkpoint_with_equal_logits(trained):
    torch, transformers = needs_transformers("loading the trained checkpoint in transformers")
    AutoModelForCausalLM = transformers.AutoModelForCausalLM

    ids = np.array([[1, 450, 1186, 871, 17, 5, 900]])
    ours = tl.load(trained)(ids).logits
    hf = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(ours - theirs).max() <= LOGITS_TOL


def test_the_loss_goes_down_on_a_batch_it_sees_again():
    config = LlamaConfig.from_json(default_model_dir() / "config.json")
    model = tl.build_model(config, initial_tensors(config, seed=1))
    rows = np.random.default_rng(0).integers(3, config.vocab_size, (2, 17))
    losses = fit(model, lambda: rows, TrainSettings(steps=12, warmup_steps=2, batch_size=2, seq_len=16))
    assert losses[-1] < losses[0] - 1.0  # the start is about log(2048) = 7.6


def test_initial_weights_are_transformers_rule():
    config = LlamaConfig.from_json(default_model_dir() / "config.json")
    t = initial_tensors(config, seed=0)
    assert all((t[n] == 1).all() for n in t if n.endswith("norm.weight"))
    w = t["model.layers.0.self_attn.q_proj.weight"]
    assert abs(float(w.std()) - config.initializer_range) < 0.001 and abs(float(w.mean())) < 0.001
    assert not np.array_equal(t["model.embed_tokens.weight"], initial_tensors(config, seed=1)["model.embed_tokens.weight"])


def test_windows_start_at_a_line_after_bos():
    tok = tl.load_tokenizer(default_model_dir())
    data = encode_text(tok, "one line\nanother line here\n\nsecond document\n")
    stream, starts = data["train"]
    assert stream[0] == tok.bos_token_id and stream[-1] == tok.eos_token_id
    assert list(stream[starts[0]:starts[1]]) == tok.encode("one line", add_special_tokens=False)
    rows = sample_batch(stream, starts, 3, 4, np.random.default_rng(0), tok.bos_token_id)
    assert rows.shape == (3, 5) and (rows[:, 0] == tok.bos_token_id).all()
    with pytest.raises(ValueError, match="no window of 400 tokens"):
        sample_batch(stream, starts, 3, 400, np.random.default_rng(0))


def test_bad_arguments_get_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--steps", "2"]) == 1
    assert "missing.txt: no such text file" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("too short\n", encoding="utf-8")
    assert main(["train", str(short), "--out", str(tmp_path / "o"), "--steps", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no window of 256 tokens" in err[0]
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])  # relative to max |g| per tensor
def test_threads_sharing_a_batch_give_the_whole_batchs_gradients(dtype, tol):
    """Two or three workers, uneven shares, -100 labels and a tied head: the kept-count weighted mean of the
    shares' losses and gradients is the whole batch's."""
    from tinyllama_ref.formats.checkpoint import flatten
    from tinyllama_ref.train import value_and_grad_threads

    config = LlamaConfig.from_dict(dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                        max_position_embeddings=32))
    model = tl.build_model(config, initial_tensors(config, seed=2), dtype=dtype)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 64, (5, 9))
    labels = np.where(rng.random((5, 9)) < 0.3, -100, ids)
    loss, grads = tl.value_and_grad(model, ids, labels)
    for workers in (2, 3):
        loss_t, grads_t = value_and_grad_threads(model, ids, labels, workers)
        assert abs(float(loss_t) - float(loss)) <= tol * abs(float(loss))
        flat = flatten(grads_t)
        assert flat["lm_head.weight"] is flat["model.embed_tokens.weight"]
        for name, want in flatten(grads).items():
            assert np.abs(flat[name] - want).max() <= tol * np.abs(want).max(), name
