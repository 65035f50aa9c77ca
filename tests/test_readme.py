"""README.md's code, run as printed, so that it cannot drift: its Python block on the bundled model
(the checkpoint path is the one placeholder replaced; "out" and "text.txt" are files in a temporary
working directory), and its `$ tinyllama-ref ...` lines with the output printed under them."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tinyllama_ref.cli import default_model_dir

README = (REPO / "README.md").read_text(encoding="utf-8")
PLACEHOLDER = "path/to/hf_checkpoint_dir"


def code_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of README.md, in order."""
    blocks, language, lines = [], None, []
    for line in README.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(lines) + "\n"))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def python_block() -> str:
    """The README's one ```python block (under "## Python")."""
    blocks = [text for language, text in code_blocks() if language == "python"]
    assert len(blocks) == 1, (f"README.md has {len(blocks)} python blocks; this file runs the one under '## Python' "
                              f"as printed: give a new block its own test here, so that it cannot drift either")
    return blocks[0]


def cli_examples() -> list[tuple[str, list[str]]]:
    """Each `$ command` line of the README's code blocks, with the output lines printed under it."""
    examples = []
    for _, block in code_blocks():
        printed = None  # a block's lines before its first `$` are not output
        for line in block.splitlines():
            if line.startswith("$ "):
                printed = []
                examples.append((line[2:], printed))
            elif printed is not None and line.strip():
                printed.append(line)
    return examples


def claimed_values(code: str) -> list[tuple[str, object]]:
    """Lines written `EXPRESSION  # VALUE` where VALUE is a Python literal: what the README says EXPRESSION gives."""
    claims = []
    for line in code.splitlines():
        expr, sep, comment = line.partition("  #")
        if not sep or "=" in expr.split("(")[0]:
            continue
        try:
            claims.append((expr.strip(), ast.literal_eval(comment.strip())))
        except (ValueError, SyntaxError):
            pass
    return claims


def test_the_python_block_runs_as_printed_on_the_bundled_model(tmp_path, monkeypatch, capsys):
    code = python_block()
    assert code.count(PLACEHOLDER) >= 2
    monkeypatch.chdir(tmp_path)  # model.save_pretrained("out") and open("text.txt") land here
    (tmp_path / "text.txt").write_text("In the beginning God created the heaven and the earth. " * 40)
    namespace = {}
    exec(compile(code.replace(PLACEHOLDER, str(default_model_dir())), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    numbers = [float(line) for line in printed.splitlines() if re.fullmatch(r"\d+\.\d+", line)]
    assert len(numbers) == 1 and 1 < numbers[0] < 2048, printed  # the perplexity on its own line (the stream's
    assert "■" in printed                                         # loop ends its line), then the mask drawn


def test_the_python_blocks_claimed_values_hold():
    claims = claimed_values(python_block())
    assert claims, "the README's python block claims no value in a comment any more"
    import tinyllama_ref as tl

    tok = tl.load_tokenizer(default_model_dir())
    for expr, value in claims:
        assert eval(expr, {"tok": tok, "tl": tl}) == value, expr


def run_line(command: str, env: dict) -> subprocess.CompletedProcess:
    """A README command line through bash, with `tinyllama-ref` as this checkout's CLI."""
    command = command.replace("tinyllama-ref", f"{sys.executable} -m tinyllama_ref.cli")
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600, env=env)


def same_but_numbers(expected: str, got: str) -> bool:
    """Equal, with every decimal number (a speed) allowed to differ."""
    pattern = re.escape(expected)
    pattern = re.sub(r"\d+\\\.\d+", r"\\d+\\.\\d+", pattern)
    return re.fullmatch(pattern, got) is not None


BUNDLED = [(c, out) for c, out in cli_examples() if "--model" not in c and "fetch" not in c]
SMOLLM2 = [(c, out) for c, out in cli_examples() if (c, out) not in BUNDLED]


def test_the_readme_shows_command_lines():
    assert len(BUNDLED) >= 1 and len(SMOLLM2) >= 2


@pytest.mark.parametrize("command, printed", BUNDLED, ids=[c for c, _ in BUNDLED])
def test_a_readme_command_on_the_bundled_model_prints_what_the_readme_shows(command, printed):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = run_line(command, env)
    assert run.returncode == 0, run.stderr
    shown = run.stdout.splitlines() + run.stderr.splitlines()
    for line in printed:
        assert any(same_but_numbers(line, got) for got in shown), f"README shows {line!r}; the command printed {shown}"


@pytest.mark.slow
def test_the_readme_smollm2_lines_answer_paris(tmp_path):
    """`fetch smollm2` then the chat line. Into a temporary cache holding the test data's GGUF (a hard link)
    unless the model is fetched already: the tests never write a 540 MB conversion into your cache."""
    import realdata
    from tinyllama_ref.fetch import KNOWN_MODELS, is_complete, link_or_copy, member_path, model_dir

    env = dict(os.environ, PYTHONPATH=str(REPO))
    if not is_complete(model_dir("smollm2")):
        gguf = realdata.smollm2_gguf_path()  # cached test data (or a skip, offline)
        source = KNOWN_MODELS["smollm2"]
        dest = member_path(source.spec, source.member, tmp_path)
        dest.parent.mkdir(parents=True)
        link_or_copy(gguf, dest)
        env["TINYLLAMA_CACHE"] = str(tmp_path)
    for command, printed in SMOLLM2:
        run = run_line(command, env)
        assert run.returncode == 0, run.stderr
        for line in printed:
            assert line in run.stdout.splitlines(), f"README shows {line!r}; the command printed {run.stdout!r}"
