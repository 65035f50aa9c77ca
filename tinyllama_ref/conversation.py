"""Conversations: Meta's Llama-2-chat prompt format, the Jinja chat templates that checkpoints carry,
and the interactive chat (`chat`, exported as `tinyllama_ref.chat`).

Llama-2-chat (Meta's `chat_completion` in llama/generation.py) puts each user/assistant exchange
in its own BOS ... EOS sequence, and folds the optional system prompt into the first user turn:

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user 1} [/INST] {answer 1} </s><s>[INST] {user 2} [/INST]
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .generation import SamplingParams

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]


def format_dialog(messages, tokenizer) -> list[int]:
    """Token ids of a Llama-2-chat prompt, built exactly as Meta's `chat_completion` builds it.

    messages: [{"role": "system"|"user"|"assistant", "content": str}, ...]; the system message is
    optional and first; then user and assistant alternate, ending with user.
    Each turn is encoded with the SentencePiece model alone, so "<s>" typed by a user stays text.

    >>> format_dialog([{"role": "user", "content": "Hi"}], tok)   # doctest: +SKIP
    [1, 518, 25580, 29962, 6324, 518, 29914, 25580, 29962]
    """
    dialog = _check_messages(messages)
    for m in dialog:
        if any(tag in m["content"] for tag in SPECIAL_TAGS):
            raise ValueError(f"message content may not contain the prompt tags {SPECIAL_TAGS}: {m['content']!r}")
    if dialog[0]["role"] == "system":
        if len(dialog) < 2:
            raise ValueError("a system message must be followed by a user message")
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
                  ] + dialog[2:]
    for k, m in enumerate(dialog):
        expected = "user" if k % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"message {k} has role {m['role']!r}, expected {expected!r}: after an optional "
                             "system message, roles must alternate user/assistant/user/...")
    if dialog[-1]["role"] != "user":
        raise ValueError(f"the last message must be from the user, got {dialog[-1]['role']!r}")
    ids: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += tokenizer.encode(f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} ",
                                add_bos=True, add_eos=True, split_special_tokens=True)
    ids += tokenizer.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}",
                            add_bos=True, add_eos=False, split_special_tokens=True)
    return ids


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {k} must be a dict with str 'role' and 'content', got {m!r}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"message {k} has role {m['role']!r}; roles are 'system', 'user' and 'assistant'")
    return list(messages)


def compile_chat_template(template: str):
    """A Jinja template compiled the way transformers compiles chat templates.

    Sandboxed and immutable, trim_blocks and lstrip_blocks, the loopcontrols extension, a `tojson`
    that keeps non-ASCII characters, and the globals `raise_exception` and `strftime_now`.
    """
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise ImportError("chat templates need jinja2: pip install jinja2") from e

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


def apply_chat_template(tokenizer, messages, add_generation_prompt: bool = True, tokenize: bool = True,
                        chat_template: str | None = None, **kwargs):
    """Render messages with the checkpoint's chat template; token ids (tokenize=True) or the prompt text.

    The template sees `messages`, `add_generation_prompt`, the special tokens (bos_token, eos_token,
    unk_token, pad_token) and any extra keyword arguments. The rendered text is encoded without
    adding BOS/EOS, since templates write them themselves (as transformers does).

    >>> apply_chat_template(tok, [{"role": "user", "content": "Hi"}], tokenize=False)   # doctest: +SKIP
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    template = chat_template or tokenizer.chat_template
    if not template:
        raise ValueError(f"{tokenizer.source} has no chat template; pass chat_template=... "
                         "(or use format_dialog for Llama-2-chat)")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    text = compile_chat_template(template).render(  # the special tokens as transformers passes them
        messages=messages, add_generation_prompt=add_generation_prompt, **{**tokenizer.special_tokens_map, **kwargs})
    if not tokenize:
        return text
    return tokenizer.encode(text, add_bos=False, add_eos=False)


# -- the interactive chat ------------------------------------------------------------------

def prompt_ids(tokenizer, messages) -> list[int]:
    """The prompt for the next answer: the checkpoint's chat template if it has one, else Llama-2-chat."""
    if tokenizer.chat_template:
        return apply_chat_template(tokenizer, messages, add_generation_prompt=True, tokenize=True)
    return format_dialog(messages, tokenizer)


def trim_to_fit(tokenizer, messages, budget: int) -> tuple[list, list[int]]:
    """Drop the oldest user/assistant exchanges (never the system prompt or the last user turn)
    until the prompt has at most `budget` tokens; returns the kept messages and their prompt ids."""
    messages = list(messages)
    ids = prompt_ids(tokenizer, messages)
    first = 1 if messages and messages[0]["role"] == "system" else 0
    while len(ids) > budget and len(messages) - first > 1:
        del messages[first:first + 2]  # one user turn and the answer to it
        ids = prompt_ids(tokenizer, messages)
    if len(ids) > budget:
        raise ValueError(f"the message alone needs {len(ids)} tokens; the context leaves room for {budget}")
    return messages, ids


ANSWER_ROOM = 512  # tokens kept free for an answer when old exchanges are dropped (at most half the context)
MAX_NEW_TOKENS = ANSWER_ROOM  # an answer's default cap: a greedy loop ends in seconds, not after the whole context


def chat(model, tokenizer, system: str | None = None, sampling: SamplingParams | None = None, *, input_fn=input,
         output=None, log=None, **sampling_args) -> list:
    """An interactive chat: read a line, stream the answer, keep the dialog; returns it at the end.

    How to sample: a SamplingParams, or its fields by name, as for `stream`. An answer runs until EOS,
    MAX_NEW_TOKENS (512) new tokens or the end of the context window; max_new_tokens=N sets the cap and
    0 lifts it (the checkpoint's generation_config limit is meant for one-shot generation and is not applied
    here). After each answer `log` (stderr) gets the speed line `generate` prints, and a line when the
    answer was cut. Ctrl-C during an answer stops it: what was said stays in the dialog, marked
    `"cut": True` (as an answer cut by the limit or the context is), and the next prompt comes. Ctrl-C or
    Ctrl-D at an empty prompt, or /exit, ends the session; Ctrl-C over typed text discards the line.
    /reset forgets the dialog (keeps the system prompt). When the context fills, the oldest exchanges
    are dropped first, keeping ANSWER_ROOM tokens free for the answer.
    """
    import sys

    from .generation import GenerationStats, sampling_for, stream

    context = model.config.max_position_embeddings
    max_new_tokens = sampling_args.pop("max_new_tokens", None)
    max_new_tokens = getattr(sampling, "max_new_tokens", None) if max_new_tokens is None else max_new_tokens
    max_new_tokens = MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens or context  # 0: no cap
    sp = sampling_for(model, sampling, **sampling_args, max_new_tokens=max_new_tokens)
    output, log = output or sys.stdout, log or sys.stderr
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    if not tokenizer.chat_template:
        print(f"note: {tokenizer.source} has no chat template, so this is probably a base model, not a chat "
              f"model: it continues text rather than answering. The prompt uses Llama-2's [INST] format.",
              file=log)
    budget = context - min(max_new_tokens, ANSWER_ROOM, context // 2)
    while True:
        try:
            line = input_fn(">>> ")
            line.encode("utf-8")  # bytes that are not UTF-8 come as lone surrogates (or as the error)
        except EOFError:
            print(file=output)
            break
        except KeyboardInterrupt:
            print(file=output)
            if _typed_text():  # Ctrl-C over a half-typed line discards it, as a shell does
                continue
            break
        except UnicodeError:
            print("skipped a line that is not valid UTF-8", file=sys.stderr)
            continue
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            messages = list(base)
            continue
        if not command:
            continue
        messages, ids = trim_to_fit(tokenizer, messages + [{"role": "user", "content": line}], budget)
        parts, stats = [], GenerationStats()
        answer = stream(model, tokenizer, ids, sp, stats=stats)
        try:
            for delta in answer:
                parts.append(delta)
                output.write(delta)
                output.flush()
        except KeyboardInterrupt:  # stop this answer, keep the session
            answer.close()  # ends the decoding loop now, so its timings are right
            stats.stop_reason = "interrupted"
        print(file=output)
        print(f"prefill: {stats.prompt_tokens} tokens, {stats.prefill_tokens_per_second:.1f} tok/s | "
              f"decode: {stats.new_tokens} tokens, {stats.decode_tokens_per_second:.1f} tok/s | "
              f"stop: {stats.stop_reason}", file=log)
        if stats.stop_reason == "interrupted":
            print("(answer stopped by Ctrl-C; it stays in the dialog, marked as cut. Ctrl-C or Ctrl-D at an empty "
                  "prompt ends the session)", file=log)
        elif stats.stop_reason == "length":
            print(f"(the answer was cut at {stats.new_tokens} new tokens: give a larger --max-new-tokens, "
                  f"or --max-new-tokens 0 to let answers run to the end of the context)", file=log)
        elif stats.stop_reason == "context":
            print(f"(the answer was cut: the context window of {context} tokens is full; older exchanges are "
                  f"dropped for the next question, or /reset to start over)", file=log)
        cut = {"cut": True} if stats.stop_reason in ("interrupted", "length", "context") else {}
        messages.append({"role": "assistant", "content": "".join(parts).strip(), **cut})
    return messages


def _typed_text() -> str:
    """What was typed on the prompt line when Ctrl-C came: readline's buffer where readline is in use, else ''."""
    import sys

    readline = sys.modules.get("readline")
    return readline.get_line_buffer() if readline is not None else ""
