"""Generation, streaming, batching, chat and the command line, on the bundled model.

The tests that take `bundled` run on every backend (NumPy, the CuPy double, real CuPy when a GPU is
present; see the `backend` fixture in conftest.py), with the same assertions.
"""
import subprocess
import sys

import pytest

import tinyllama_ref as tl
from tinyllama_ref.conversation import chat, trim_to_fit
from tinyllama_ref.cli import default_model_dir, main
from tinyllama_ref.generation import ContextLengthError, GenerationStats, SamplingParams, _TextDeltas, generate_ids

MODELS = {}  # backend name -> the bundled model loaded on it (loaded once per run)


@pytest.fixture(scope="module")
def tokenizer():
    return tl.load_tokenizer(default_model_dir())


@pytest.fixture
def bundled(backend, tokenizer):
    if backend.name not in MODELS:
        MODELS[backend.name] = backend.load(default_model_dir())
    return MODELS[backend.name], tokenizer


def test_same_seed_same_text(bundled):
    model, tok = bundled
    a = tl.generate(model, tok, "And God said", max_new_tokens=12, temperature=0.9, top_k=40, seed=3)
    b = tl.generate(model, tok, "And God said", max_new_tokens=12, temperature=0.9, top_k=40, seed=3)
    assert a == b and len(a) > 0


def test_streaming_equals_non_streaming(bundled):
    model, tok = bundled
    kwargs = dict(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=1)
    deltas = list(tl.stream(model, tok, "In the beginning", **kwargs))
    assert len(deltas) > 1
    assert "".join(deltas) == tl.generate(model, tok, "In the beginning", **kwargs)


def test_greedy_text_is_the_decoded_greedy_ids(bundled):
    """The text streamed for a prompt equals decoding (prompt + new ids) minus the decoded prompt."""
    model, tok = bundled
    stats = GenerationStats()
    text = tl.generate(model, tok, "Once upon a time", max_new_tokens=15, temperature=0,
                       repetition_penalty=1.0, stats=stats)  # the checkpoint default is 1.1
    prompt = tok.encode("Once upon a time")
    ids = prompt + [int(t) for t in _greedy_ids(model, prompt, 15)]
    full = tok.decode(ids, skip_special_tokens=True)
    assert full == tok.decode(prompt, skip_special_tokens=True) + text
    assert stats.new_tokens == 15 and stats.stop_reason == "length"


def _greedy_ids(model, prompt, n):
    out = model([prompt], use_cache=True)
    ids = []
    for _ in range(n):
        t = int(out.logits[0, -1].argmax())
        ids.append(t)
        out = model([[t]], past_key_values=out.past_key_values, use_cache=True)
    return ids


def test_batched_generation_equals_one_by_one(bundled):
    model, tok = bundled
    prompts = ["Once upon a time", "And the LORD spake unto Moses, saying", "Blessed are"]
    batched = tl.generate_batch(model, tok, prompts, max_new_tokens=16, temperature=0)
    alone = [tl.generate(model, tok, p, max_new_tokens=16, temperature=0) for p in prompts]
    assert batched == alone


SAMPLERS = [dict(temperature=0.9, top_k=40), dict(temperature=0.8, top_p=0.9),
            dict(temperature=1.0, repetition_penalty=1.3), dict(temperature=0.7, top_k=20, top_p=0.95,
                                                                 repetition_penalty=1.1)]


@pytest.mark.parametrize("kwargs", SAMPLERS, ids=["top_k", "top_p", "repetition_penalty", "all"])
def test_sampled_tokens_are_the_same_on_every_backend(bundled, kwargs):
    """Sampling runs on the host from the last row of logits: same seed, same tokens, whatever the device."""
    model, tok = bundled
    prompts = [tok.encode("And God said"), tok.encode("In the beginning God created")]
    sp = SamplingParams(max_new_tokens=12, seed=5, **kwargs)
    if "numpy" not in MODELS:
        MODELS["numpy"] = tl.load(default_model_dir())
    want = [t.tolist() for t in generate_ids(MODELS["numpy"], prompts, sp)]
    assert [t.tolist() for t in generate_ids(model, prompts, sp)] == want


def test_stop_string_ends_generation_and_is_not_included(bundled):
    model, tok = bundled
    full = tl.generate(model, tok, "And God said", max_new_tokens=30, temperature=0)
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip()
    stats = GenerationStats()
    cut = tl.generate(model, tok, "And God said", max_new_tokens=30, temperature=0, stop=[stop], stats=stats)
    assert cut == full[:full.index(stop)] and stats.stop_reason == "stop"


def test_prompt_longer_than_context_is_a_clear_error(bundled):
    model, tok = bundled
    n = model.config.max_position_embeddings
    with pytest.raises(ContextLengthError, match=f"the prompt has {n + 5} tokens, but the model's context is {n}"):
        tl.generate(model, tok, [tok.bos_id] + [5] * (n + 4), max_new_tokens=3)


def test_generation_stops_at_the_context_limit_with_a_message(bundled):
    model, tok = bundled
    n = model.config.max_position_embeddings
    stats = GenerationStats()
    tl.generate(model, tok, [tok.bos_id] + [5] * (n - 4), max_new_tokens=50, temperature=0, stats=stats)
    assert stats.stop_reason == "context" and "context window" in stats.messages[0]
    assert stats.new_tokens <= 4


def test_multibyte_characters_are_emitted_only_when_complete(tokenizer):
    tok = tokenizer
    text = " naïve 世界 🙂 done"
    ids = tok.encode(text, add_bos=False)
    deltas = _TextDeltas(tok, [tok.bos_id])
    pieces = [deltas.push(i) for i in ids] + [deltas.push(-1, final=True)]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode([tok.bos_id] + ids, skip_special_tokens=True)
    assert sum(1 for p in pieces if p == "") >= 3  # the byte-fallback pieces of 世, 界 and 🙂 were held back


def test_chat_keeps_the_dialog_and_trims_old_turns(bundled):
    model, tok = bundled
    lines = iter(["Who made the heaven?", "/reset", "And the earth?"])

    def typed(prompt):  # what a person types, then Ctrl-D
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = __import__("io").StringIO()
    messages = chat(model, tok, system="Answer in the words of the KJV.", max_new_tokens=8, temperature=0,
                    input_fn=typed, output=out)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "And the earth?"
    long = [{"role": "system", "content": "S"}]
    for i in range(30):
        long += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": "answer " * 5}]
    long.append({"role": "user", "content": "last"})
    kept, ids = trim_to_fit(tok, long, budget=120)
    assert len(ids) <= 120 and kept[0]["role"] == "system" and kept[-1]["content"] == "last"
    assert len(kept) < len(long)


def test_chat_says_when_an_answer_is_cut_how_fast_it_ran_and_that_a_base_model_is_not_a_chat_model(bundled):
    import io
    import re

    model, tok = bundled

    def one_question(answers):
        lines = iter(["In the beginning"])

        def typed(prompt):
            try:
                return next(lines)
            except StopIteration:
                raise EOFError from None
        out, log = io.StringIO(), io.StringIO()
        chat(model, tok, temperature=0, input_fn=typed, output=out, log=log, max_new_tokens=answers)
        return log.getvalue()

    cut = one_question(4)
    assert "not a chat model" in cut                      # the bundled model has no chat template
    assert re.search(r"decode: 4 tokens, [\d.]+ tok/s \| stop: length", cut)
    assert "cut at 4 new tokens" in cut and "--max-new-tokens" in cut
    free = one_question(0)                                # no limit: neither 512 nor the generation config's 64
    decoded = int(re.search(r"decode: (\d+) tokens", free).group(1))
    assert decoded > 64 or "stop: eos" in free
    assert "cut at" not in free


BAD_SAMPLING = [("max_new_tokens", -5), ("temperature", -1.0), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5),
                ("repetition_penalty", 0.0), ("seed", -1)]


@pytest.mark.parametrize("field, value", BAD_SAMPLING)
def test_a_bad_sampling_value_is_refused_by_sampling_params_in_the_same_words_everywhere(bundled, capsys, field,
                                                                                         value):
    """SamplingParams is the one place the sampling arguments are checked: generate, stream, generate_batch,
    chat (by keyword, or over a SamplingParams) and the CLI's generate and chat flags refuse a bad value with
    its message, word for word."""
    model, tok = bundled
    with pytest.raises(ValueError) as e:
        SamplingParams(**{field: value})
    message = str(e.value)
    assert message.startswith(f"{field}={value!r} must be ")

    def no_input(prompt):
        raise AssertionError("chat read a line before checking its sampling arguments")

    calls = {
        "generate": lambda: tl.generate(model, tok, "In", **{field: value}),
        "generate over a SamplingParams": lambda: tl.generate(model, tok, "In", sampling=SamplingParams(),
                                                              **{field: value}),
        "stream": lambda: list(tl.stream(model, tok, "In", **{field: value})),
        "generate_batch": lambda: tl.generate_batch(model, tok, ["In", "And"], **{field: value}),
        "chat": lambda: chat(model, tok, input_fn=no_input, **{field: value}),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message, name
    flag = "--" + field.replace("_", "-")
    for command in (["generate", "x"], ["chat"]):
        with pytest.raises(SystemExit) as e:
            main([*command, flag, str(value)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument {flag}" in err and err.rstrip().endswith(message), err


# -- the command line ------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tinyllama_ref.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_generate_is_deterministic_and_reports_speed():
    a = run_cli("generate", "Once upon a time", "--max-new-tokens", "12", "--seed", "0")
    b = run_cli("generate", "Once upon a time", "--max-new-tokens", "12", "--seed", "0")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("Once upon a time")
    assert "prefill:" in a.stderr and "decode:" in a.stderr and "tok/s" in a.stderr


@pytest.mark.parametrize("args, message", [
    (["generate", "x", "--model", "/no/such/dir"], "model not found: /no/such/dir"),
    (["info", "--model", "/no/such/dir"], "model not found"),
    (["tokenize", "x", "--model", "/no/such/dir"], "model not found"),
])
def test_cli_errors_are_one_line(args, message):
    r = run_cli(*args)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--top-p", "2"), ("--temperature", "-1"), ("--max-new-tokens", "x"),
                                         ("--backend", "tpu")])
def test_cli_bad_flag_values_exit_2(flag, value):
    r = run_cli("generate", "x", flag, value)
    assert r.returncode == 2 and flag in r.stderr and "Traceback" not in r.stderr


def test_cli_help_everywhere():
    for cmd in ["generate", "chat", "info", "tokenize", "convert", "fetch", "dump", "compare", "golden", "mask",
                "perplexity"]:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0


def test_cli_info_and_tokenize(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "kv heads" in out
    assert main(["tokenize", "In the beginning 🦙"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    assert ["261", "'▁the'", "' the'"] in rows                   # the piece, and the text it decodes to
    assert ["243", "'<0xF0>'", "(part of a character that spans tokens)"] in rows


def test_a_test_data_download_says_what_and_how_big(tmp_path, monkeypatch, capsys):
    import tinyllama_ref.fetch as fetch

    def fake_pip(cmd, **kwargs):  # pip download, as far as the cache can tell
        (tmp_path / "dl" / "mistral_common-1.13.1-py3-none-any.whl").write_bytes(b"x" * 2_000_000)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    path = fetch.cached_distribution("mistral-common==1.13.1", cache_dir=tmp_path, about="a tokenizer")
    err = capsys.readouterr().err
    assert "downloading mistral-common==1.13.1 from PyPI (a tokenizer)" in err and "2.0 MB" in err
    assert fetch.cached_distribution("mistral-common==1.13.1", cache_dir=tmp_path) == path  # cached: silent
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("threads", ["1", "2"])
def test_info_shows_numpys_blas_and_its_threads(threads):
    import os

    run = subprocess.run([sys.executable, "-m", "tinyllama_ref.cli", "info"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": ""})
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("blas:")]
    if "openblas" in line:  # NumPy's wheels; a NumPy built on another BLAS names it instead
        assert f", {threads} thread(s) from OPENBLAS_NUM_THREADS={threads}" in line
        assert ("OPENBLAS_NUM_THREADS=1 can decode several times faster" in line) == (threads != "1")


def test_fetch_offers_the_test_data():
    assert "test-data" in run_cli("fetch", "--help").stdout


def test_generate_returns_the_continuation_or_with_return_full_text_the_prompt_too(bundled):
    model, tok = bundled
    continuation = tl.generate(model, tok, "In the beginning", max_new_tokens=5, temperature=0)
    full = tl.generate(model, tok, "In the beginning", max_new_tokens=5, temperature=0, return_full_text=True)
    assert full == "In the beginning" + continuation and not continuation.startswith("In the beginning")
    ids = tok.encode("In the beginning")
    assert tl.generate(model, tok, ids, max_new_tokens=5, temperature=0, return_full_text=True) == full
    assert tok.decode(ids).startswith("<s>") and tok.decode(ids, skip_special_tokens=True) == "In the beginning"
