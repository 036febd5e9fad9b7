"""`gptoss chat` driven through a real pseudo-terminal (pexpect): typing, streaming, Ctrl-C mid-reply, slash
commands with completion, save/load, tool approval, exit codes. The scripted engine (GPTOSS_SCRIPTED_ENGINE)
gives known replies; the tiny random-weight model runs the real engine end to end."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
from chat_support import chat_env, gptoss_command, strip_ansi, write_script

pexpect = pytest.importorskip("pexpect", reason="pexpect drives the terminal tests")
if sys.platform == "win32":  # pexpect.spawn needs a POSIX pty
    pytest.skip("pseudo-terminal tests need a POSIX pty", allow_module_level=True)

pytest_plugins = ("chat_fixtures",)

PROMPT = ">>>"
STATS = re.compile(r"(\d+) tokens · .*prompt [\d,]+ \(([\d,]+) cached\)")
GREETING = ("<|channel|>analysis<|message|>The user greets me.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Hello! **Nice** to meet you.<|return|>")
LONG = "<|channel|>final<|message|>Counting: " + " ".join(f"n{i}" for i in range(300)) + "<|return|>"


def spawn(tmp_path: Path, args: list[str], script: Path | None = None, timeout: float = 20) -> "pexpect.spawn":
    command = gptoss_command()
    child = pexpect.spawn(command[0], command[1:] + args, env=chat_env(tmp_path, script), dimensions=(30, 100),
                          encoding="utf-8", timeout=timeout)
    child.logfile_read = (tmp_path / "terminal.log").open("a", encoding="utf-8")
    return child


def transcript(tmp_path: Path) -> str:
    return strip_ansi((tmp_path / "terminal.log").read_text(encoding="utf-8"))


def say(child: "pexpect.spawn", text: str) -> None:
    child.expect(PROMPT)
    child.send(text + "\r")  # a terminal's Enter is CR


def quit_with_ctrl_d(child: "pexpect.spawn") -> int:
    child.expect(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_type_stream_interrupt_continue_commands_save_load(tmp_path):
    script = write_script(tmp_path / "script.json", [
        GREETING, LONG,
        "<|channel|>analysis<|message|>Short thought here.<|end|><|start|>assistant<|channel|>final<|message|>"
        "Folded.<|return|>",
        "<|channel|>final<|message|>Back again.<|return|>",
        "<|channel|>final<|message|>Resumed fine.<|return|>",
    ], delay=0.01, context_length=8192)
    child = spawn(tmp_path, ["chat", "--no-python"], script)
    child.expect("context 8,192 tokens · reasoning medium · tools: none")

    say(child, "hello")
    child.expect("Nice")
    child.expect(STATS)
    assert child.match.group(2) == "0"

    say(child, "count to 300")
    child.expect("n5 ")
    child.sendintr()  # Ctrl-C mid-reply: the reply stops, the session stays
    child.expect("stopped · the partial reply is kept")
    child.expect(STATS)
    assert int(child.match.group(1)) < 100

    say(child, "/reasoning hide")
    child.expect("reasoning: folded to one line")
    say(child, "think briefly")
    child.expect(r"Thought for [\d.]+ s \(3 words\)")
    child.expect("Folded.")

    child.expect(PROMPT)
    child.send("/sta")
    child.expect("tokens, speed and context use")  # the completion menu offers /stats
    child.send("\t")
    child.send("\r")  # take the completion
    child.send("\r")  # send it
    child.expect(r"context\s+(\d+) / 8,192 tokens \(\d+%\) in (\d+) messages")
    used, messages = child.match.group(1), child.match.group(2)

    say(child, "again")
    child.expect("Back again.")
    child.expect(STATS)
    assert int(child.match.group(2).replace(",", "")) > 200  # the history before this turn came from the cache

    say(child, f"/save {tmp_path / 'chat.json'}")
    child.expect(r"saved (\d+) messages")
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert len(saved["tokens"]) > int(used)

    say(child, "/reset")
    child.expect("new conversation")
    say(child, "/effort high")
    child.expect("reasoning effort: high")
    say(child, f"/load {tmp_path / 'chat.json'}")
    child.expect(r"loaded (\d+) messages \(([\d,]+) tokens\).* reasoning medium")
    assert int(child.match.group(2).replace(",", "")) == len(saved["tokens"])

    say(child, "and now?")
    child.expect("Resumed fine.")
    child.expect(STATS)
    # The loaded history is token for token what the engine last saw, so the whole of it is reused.
    assert int(child.match.group(2).replace(",", "")) >= len(saved["tokens"]) - 2

    say(child, "/nope")
    child.expect("unknown command /nope")
    assert quit_with_ctrl_d(child) == 0
    assert int(messages) > 0
    log = transcript(tmp_path)
    assert "**Nice**" not in log.split("Nice")[-1]  # the final answer was re-rendered as Markdown


def test_tool_call_is_shown_approved_and_run(tmp_path):
    script = write_script(tmp_path / "script.json", [
        "<|channel|>analysis<|message|>Let me compute.<|end|><|start|>assistant<|channel|>analysis to=python"
        "<|message|>x = 6 * 7\nprint(x)<|call|>",
        "<|channel|>final<|message|>The answer is 42.<|return|>",
        "<|channel|>analysis to=python<|message|>print(x + 1)<|call|>",
        "<|channel|>final<|message|>Denied, fine.<|return|>",
    ])
    child = spawn(tmp_path, ["chat"], script)
    child.expect("tools: python")
    say(child, "what is 6*7?")
    child.expect("Tool call: python")
    child.expect(r"Run python\? \[y\]es once")
    child.send("y\r")
    child.expect("python output:")
    child.expect("42")
    child.expect("The answer is 42.")
    child.expect(STATS)
    say(child, "/tools")
    child.expect("python +asks before running")
    say(child, "and plus one?")
    child.expect(r"Run python\?")
    child.send("n\r")
    child.expect("python denied:")
    child.expect("Denied, fine.")
    say(child, "/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_multiline_input_and_typing_ahead_during_a_reply(tmp_path):
    script = write_script(tmp_path / "script.json", [
        "<|channel|>final<|message|>One.<|return|>",
        "<|channel|>final<|message|>Two " + "two " * 60 + "end.<|return|>",
        "<|channel|>final<|message|>Three.<|return|>"], delay=0.02)
    child = spawn(tmp_path, ["chat", "--no-python"], script)
    say(child, '"""first line')
    child.send("second line\r")
    child.send('"""\r')
    child.expect("One.")
    child.expect(PROMPT)
    child.send("line a")
    child.send("\x1b\r")  # Alt-Enter (Esc, Enter): a new line, not sent
    child.send("line b\r")
    child.expect("Two two")
    child.send("typed ahead\r")  # while the reply streams: the tty turns this Enter into LF; it still sends
    child.expect("end.")
    child.expect("Three.")
    say(child, f"/save {tmp_path / 'ml.json'}")
    child.expect("saved")
    assert quit_with_ctrl_d(child) == 0
    users = [item["message"]["content"] for item in json.loads((tmp_path / "ml.json").read_text())["items"]
             if "message" in item and item["message"]["role"] == "user"]
    assert users == ["first line\nsecond line", "line a\nline b", "typed ahead"]
    streamed = transcript(tmp_path).split("Two two")[1].split("end.")[0]
    assert "typed ahead" not in streamed  # not echoed into the streaming reply
    history = (tmp_path / "data" / "gptoss" / "chat_history").read_text()
    assert "second line" in history  # the input history file lives in the user data dir


def test_tiny_real_model_reuses_the_cache_and_resumes_a_saved_chat(tmp_path, tiny_chat_model):
    child = spawn(tmp_path, ["chat", str(tiny_chat_model), "--device", "cpu", "--no-python", "--seed", "0",
                             "--max-tokens", "6"], timeout=60)
    child.expect(r"context 2,048 tokens")  # the plan's context, shown: never a silent 4k
    say(child, "hello")
    child.expect(STATS)
    assert child.match.group(1) == "6" and child.match.group(2) == "0"
    say(child, "again")
    child.expect(STATS)
    assert int(child.match.group(2).replace(",", "")) > 200  # the real engine kept the first turn's KV cache
    say(child, "/save " + str(tmp_path / "tiny.json"))
    child.expect(r"saved \d+ messages \(([\d,]+) tokens\)")
    saved_tokens = int(child.match.group(1).replace(",", ""))
    say(child, "/reset")
    child.expect("new conversation")
    say(child, "/load " + str(tmp_path / "tiny.json"))
    child.expect("loaded")
    say(child, "more")
    child.expect(STATS)
    assert int(child.match.group(2).replace(",", "")) >= saved_tokens - 2  # resumed exactly: all still cached
    assert quit_with_ctrl_d(child) == 0


def test_tiny_real_model_ctrl_c_stops_a_long_reply(tmp_path, tiny_chat_model):
    child = spawn(tmp_path, ["chat", str(tiny_chat_model), "--device", "cpu", "--no-python", "--seed", "1"],
                  timeout=60)
    say(child, "write forever")
    time.sleep(1.0)
    child.sendintr()
    child.expect("stopped")
    child.expect(STATS)
    assert int(child.match.group(1)) < 1000  # far less than the context the reply could have filled
    say(child, "/stats")
    child.expect("1 reply")
    assert quit_with_ctrl_d(child) == 0


def test_missing_default_model_offers_a_download_then_exits_3(tmp_path):
    child = spawn(tmp_path, ["chat"])
    child.expect(r"gpt-oss-20b is not downloaded yet\. Download it now\?")
    child.send("n\r")
    child.expect(pexpect.EOF)
    child.close()
    out = transcript(tmp_path)
    assert child.exitstatus == 3
    assert "error: model gpt-oss-20b is not downloaded" in out and "gptoss pull gpt-oss-20b" in out
    assert "Traceback" not in out
