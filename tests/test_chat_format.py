"""Chat prompts: Llama-2-chat against Meta's reference code, chat templates against transformers."""
from __future__ import annotations

import shutil

import pytest

from realdata import mistral_tokenizer_path
from tinyllama_ref.conversation import apply_chat_template, compile_chat_template, format_dialog
from tinyllama_ref.tokenizer import load_tokenizer

spm = pytest.importorskip("sentencepiece")

# The Llama-2-chat template of Meta's HF checkpoints (tokenizer_config.json of Llama-2-7b-chat-hf).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

DIALOGS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is 2+2? "}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
     {"role": "user", "content": "Écris un haïku 🌸\nsur <s> la mer"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": " b "},
     {"role": "user", "content": "c\td"}],
]


def meta_chat_completion_tokens(sp, dialog):
    """Meta's llama/generation.py `chat_completion` prompt building, with its Tokenizer.encode = sp.encode + BOS/EOS."""
    B_INST, E_INST = "[INST]", "[/INST]"
    B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

    def encode(s, bos, eos):
        return ([sp.bos_id()] if bos else []) + sp.encode(s) + ([sp.eos_id()] if eos else [])

    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
                  ] + dialog[2:]
    tokens = sum([encode(f"{B_INST} {(p['content']).strip()} {E_INST} {(a['content']).strip()} ", True, True)
                  for p, a in zip(dialog[::2], dialog[1::2])], [])
    return tokens + encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}", True, False)


@pytest.fixture(scope="module")
def mistral():
    path = mistral_tokenizer_path()
    return load_tokenizer(path), spm.SentencePieceProcessor(model_file=str(path))


@pytest.mark.parametrize("dialog", DIALOGS)
def test_format_dialog_matches_meta_reference(mistral, dialog):
    tok, sp = mistral
    assert format_dialog(dialog, tok) == meta_chat_completion_tokens(sp, dialog)


@pytest.mark.parametrize("messages, error", [
    ([], "non-empty list"),
    ([{"role": "assistant", "content": "x"}], "message 0 has role 'assistant', expected 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1 has role 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message must be from the user"),
    ([{"role": "system", "content": "s"}], "followed by a user message"),
    ([{"role": "robot", "content": "a"}], "roles are 'system', 'user' and 'assistant'"),
    ([{"role": "user"}], "must be a dict with str 'role' and 'content'"),
    ([{"role": "user", "content": "say [INST] twice"}], "may not contain the prompt tags"),
])
def test_format_dialog_errors(mistral, messages, error):
    with pytest.raises(ValueError, match=error.replace("[", r"\[")):
        format_dialog(messages, mistral[0])


@pytest.fixture(scope="module")
def hf_llama2_chat(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("llama2chat")
    shutil.copy(mistral_tokenizer_path(), d / "tokenizer.model")
    hf = transformers.LlamaTokenizer.from_pretrained(str(d), legacy=False)
    hf.chat_template = LLAMA2_TEMPLATE
    ours = load_tokenizer(d)
    ours.legacy = False
    ours.chat_template = LLAMA2_TEMPLATE
    return hf, ours


@pytest.mark.live
@pytest.mark.parametrize("dialog", [d for d in DIALOGS if d[-1]["role"] == "user"])
def test_llama2_chat_template_matches_transformers(hf_llama2_chat, dialog):
    hf, ours = hf_llama2_chat
    text = hf.apply_chat_template(dialog, tokenize=False, add_generation_prompt=True)
    assert apply_chat_template(ours, dialog, tokenize=False) == text
    hf_ids = hf.apply_chat_template(dialog, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert apply_chat_template(ours, dialog) == list(hf_ids)


def test_template_errors_are_raised(hf_llama2_chat):
    import jinja2
    _, ours = hf_llama2_chat
    with pytest.raises(jinja2.exceptions.TemplateError, match="must alternate"):
        apply_chat_template(ours, [{"role": "assistant", "content": "x"}])
    ours_no_template = load_tokenizer(mistral_tokenizer_path())
    with pytest.raises(ValueError, match="has no chat template"):
        apply_chat_template(ours_no_template, [{"role": "user", "content": "x"}])


def test_template_sandbox_and_helpers():
    t = compile_chat_template("{{ x | tojson }} {{ strftime_now('%Y') | length }}{% for i in [1,2,3] %}"
                                   "{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}")
    assert t.render(x={"é": 1}) == '{"é": 1} 41'
    import jinja2
    with pytest.raises(jinja2.exceptions.SecurityError):
        compile_chat_template("{{ ''.__class__.__mro__ }}").render()
