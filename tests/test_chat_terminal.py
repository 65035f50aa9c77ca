"""`tinyllama-ref chat` at a real terminal (a pseudo-terminal): Ctrl-C stops an answer and keeps the session.

The CLI runs in a child process, in a session of its own whose controlling terminal is the pty, so
Ctrl-C typed there is the kernel's SIGINT to it, as at a keyboard. Its answers are slowed (50 ms a piece) so that a Ctrl-C lands
inside one, and the dialog `chat` returns is printed as JSON at the end, so the test can read the history.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pty = pytest.importorskip("pty", reason="a pseudo-terminal needs a POSIX system")

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import fcntl, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty becomes this new session's terminal: Ctrl-C there is our SIGINT
import json, sys, time
import tinyllama_ref.conversation as conversation, tinyllama_ref.generation as generation
from tinyllama_ref.cli import main

plain_stream, plain_chat = generation.stream, conversation.chat

def slow_stream(*args, **kwargs):  # a piece every 50 ms: time for a Ctrl-C to land inside an answer
    for piece in plain_stream(*args, **kwargs):
        time.sleep(0.05)
        yield piece

def chat_then_dump(*args, **kwargs):
    messages = plain_chat(*args, **kwargs)
    print("DIALOG " + json.dumps(messages), file=sys.stderr)
    return messages

generation.stream, conversation.chat = slow_stream, chat_then_dump
sys.exit(main(["chat", "--temperature", "0", "--max-new-tokens", "40"]))
"""


class Terminal:
    """The chat in a child process on a pseudo-terminal: type into it, read what it shows."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", TERM="dumb")
        self.fd, child_end = pty.openpty()
        # a new session (no fork of this process by hand: pytest's threads make that unsafe), which then
        # takes the pty as its controlling terminal (CHILD's first line)
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=child_end, stdout=child_end,
                                     stderr=child_end, env=env, start_new_session=True)
        os.close(child_end)
        self.seen, self.pos = b"", 0  # all that was shown; where the next read_until looks from

    def read_until(self, text: str, timeout: float = 30.0) -> str:
        """Everything shown so far, once `text` appears after what the last call matched."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen[self.pos:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.seen.decode(errors='replace')}")
            if not select.select([self.fd], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # the child has gone and closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the chat ended before {text!r}:\n{self.seen.decode(errors='replace')}")
            self.seen += chunk
        self.pos = self.seen.index(text.encode(), self.pos) + len(text.encode())
        return self.seen.decode(errors="replace")

    def type(self, keys: str) -> None:
        time.sleep(0.3)  # as a person: readline waits for keys by then (a Ctrl-C just before it waits is seen late)
        os.write(self.fd, keys.encode())

    def exit_code(self, timeout: float = 30.0) -> int:
        """Read to the end (the DIALOG line comes last), then the child's exit status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = select.select([self.fd], [], [], 0.2)[0]
            try:
                chunk = os.read(self.fd, 4096) if ready else b""
            except OSError:  # the child has gone and closed the terminal
                chunk = b""
            self.seen += chunk
            if not chunk and self.proc.poll() is not None:
                return self.proc.returncode
        raise AssertionError(f"the chat did not end; the terminal shows:\n{self.seen.decode(errors='replace')}")

    def close(self) -> None:
        """End the child if it still runs (a failed test must not leave it behind), and the terminal."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)

    def dialog(self) -> list:
        line = self.seen.decode(errors="replace").split("DIALOG ", 1)[1].splitlines()[0]
        return json.loads(line)


@pytest.fixture
def term():
    terminal = Terminal()
    yield terminal
    terminal.close()


@pytest.mark.slow
def test_ctrl_c_stops_the_answer_keeps_it_cut_in_the_dialog_and_ctrl_c_at_an_empty_prompt_exits_0(term):
    term.read_until(">>> ")
    term.type("In the beginning\r")
    term.read_until("In the beginning\r\n")  # the echo
    term.read_until(" ")  # the answer has begun
    term.type("\x03")
    shown = term.read_until(">>> ")  # back at the prompt, the session alive
    assert "answer stopped by Ctrl-C" in shown and "stop: interrupted" in shown
    term.type("half a line")
    term.read_until("half a line")  # echoed: readline holds it (a person types slower than a write)
    term.type("\x03")  # Ctrl-C over typed text discards the line, as a shell does
    term.read_until(">>> ")
    term.type("And God said\r")
    term.read_until("prefill:")  # this answer runs to its end (40 tokens)
    term.read_until(">>> ")
    term.type("\x03")  # Ctrl-C at an empty prompt: the end, exit 0
    assert term.exit_code() == 0
    dialog = term.dialog()
    assert [m["role"] for m in dialog] == ["user", "assistant", "user", "assistant"]
    assert dialog[0]["content"] == "In the beginning" and dialog[2]["content"] == "And God said"
    assert dialog[1].get("cut") is True and dialog[1]["content"]  # what was said before Ctrl-C, marked as cut
    assert len(dialog[1]["content"]) < len(dialog[3]["content"]) or dialog[3].get("cut")


@pytest.mark.slow
def test_ctrl_d_at_an_empty_prompt_exits_0(term):
    term.read_until(">>> ")
    term.type("\x04")
    assert term.exit_code() == 0
    assert term.dialog() == []
