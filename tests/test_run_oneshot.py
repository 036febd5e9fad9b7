"""`gptoss run`: only the answer on stdout, reasoning on stderr when asked, --json against its documented schema,
prompts from stdin, tools in a pipe, --print-prompt, exit codes."""

from __future__ import annotations

import io
import json
import subprocess

import pytest
from chat_support import chat_env, gptoss_command, write_script

from gptoss_cli.chat.oneshot import EXIT_TRUNCATED, RESULT_SCHEMA, RunRequest, run_oneshot
from gptoss_cli.chat.session import Sampling
from gptoss_cli.errors import UsageError

jsonschema = pytest.importorskip("jsonschema", reason="the --json schema is checked with jsonschema")
pytest_plugins = ("chat_fixtures",)

ANSWER = ("<|channel|>analysis<|message|>Simple arithmetic.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>2 + 2 = **4**<|return|>")
PYTHON_CALL = "<|channel|>analysis to=python<|message|>print(2 + 2)<|call|>"
AFTER_TOOL = "<|channel|>final<|message|>It printed 4.<|return|>"


class Pipe(io.StringIO):
    """stdin/stdout/stderr of a process in a pipe (not a terminal)."""

    def isatty(self) -> bool:
        return False


def run(tmp_path, monkeypatch, responses, prompt="What is 2+2?", stdin="", **options):
    monkeypatch.setenv("GPTOSS_SCRIPTED_ENGINE", str(write_script(tmp_path / "script.json", responses)))
    out, err = Pipe(), Pipe()
    options.setdefault("python", False)
    code = run_oneshot(RunRequest(prompt, "gpt-oss-20b", **options), stdin=Pipe(stdin), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_stdout_carries_only_the_final_answer(tmp_path, monkeypatch):
    code, out, err = run(tmp_path, monkeypatch, [ANSWER])
    assert (code, out, err) == (0, "2 + 2 = **4**\n", "")


def test_reasoning_goes_to_stderr_only_when_asked(tmp_path, monkeypatch):
    code, out, err = run(tmp_path, monkeypatch, [ANSWER], show_reasoning=True)
    assert out == "2 + 2 = **4**\n"
    assert err == "Thinking: Simple arithmetic.\n"


def test_json_output_validates_against_the_documented_schema(tmp_path, monkeypatch):
    code, out, err = run(tmp_path, monkeypatch, [PYTHON_CALL, AFTER_TOOL], json_out=True, python=True, yes=True)
    assert code == 0 and out.count("\n") == 1
    result = json.loads(out)
    jsonschema.validate(result, RESULT_SCHEMA)
    assert result["final"] == "It printed 4." and result["finish_reason"] == "stop"
    assert result["tool_calls"] == [{"recipient": "python", "channel": "analysis", "input": "print(2 + 2)",
                                     "arguments": None, "status": "ok", "output": "4\n"}]
    usage = result["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prefill_tokens"] < usage["prompt_tokens"] * 2  # the tool round reused the first prompt's cache


def test_schema_rejects_what_it_does_not_document():
    good = {"model": "m", "final": "", "reasoning": "", "tool_calls": [], "finish_reason": "stop",
            "usage": {k: 0 for k in RESULT_SCHEMA["properties"]["usage"]["required"]},
            "timings": {k: 0.0 for k in RESULT_SCHEMA["properties"]["timings"]["required"]}}
    jsonschema.validate(good, RESULT_SCHEMA)
    no_usage = {k: v for k, v in good.items() if k != "usage"}
    for broken in ({**good, "extra": 1}, {**good, "finish_reason": "done"}, no_usage):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, RESULT_SCHEMA)


def test_prompt_comes_from_stdin_when_piped_or_dash(tmp_path, monkeypatch):
    for prompt in (None, "-"):
        code, out, _ = run(tmp_path, monkeypatch, [ANSWER], prompt=prompt, stdin="What is 2+2?\n", json_out=True)
        assert code == 0 and json.loads(out)["final"] == "2 + 2 = **4**"
    with pytest.raises(UsageError, match="empty"):
        run(tmp_path, monkeypatch, [ANSWER], prompt=None, stdin="  \n")


def test_max_tokens_cuts_the_answer_and_exits_5(tmp_path, monkeypatch):
    code, out, err = run(tmp_path, monkeypatch, [ANSWER], sampling=Sampling(max_tokens=14))
    assert code == EXIT_TRUNCATED == 5
    assert "cut short by --max-tokens" in err
    code, out, _ = run(tmp_path, monkeypatch, [ANSWER], sampling=Sampling(max_tokens=14), json_out=True)
    assert json.loads(out)["finish_reason"] == "length"


def test_tool_calls_are_denied_in_a_pipe_without_yes(tmp_path, monkeypatch):
    code, out, err = run(tmp_path, monkeypatch, [PYTHON_CALL, AFTER_TOOL], json_out=True, python=True)
    result = json.loads(out)
    assert result["tool_calls"][0]["status"] == "denied"
    assert "denied a call to python (run with --yes to allow tools)" in err


def test_a_json_tool_list_hands_the_call_back_to_the_caller(tmp_path, monkeypatch):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]))
    call = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
    code, out, _ = run(tmp_path, monkeypatch, [call], json_out=True, tools_file=str(tools))
    result = json.loads(out)
    jsonschema.validate(result, RESULT_SCHEMA)
    assert code == 0 and result["finish_reason"] == "tool_calls"
    assert result["tool_calls"] == [{"recipient": "functions.get_weather", "channel": "commentary",
                                     "input": '{"city": "Paris"}', "arguments": {"city": "Paris"},
                                     "status": "external", "output": ""}]


def test_print_prompt_shows_the_harmony_prompt_without_generating(tmp_path, monkeypatch):
    code, out, _ = run(tmp_path, monkeypatch, [], print_prompt=True, system="Be terse.", effort="high")
    assert code == 0
    assert out.startswith("<|start|>system<|message|>You are ChatGPT")
    assert "Reasoning: high" in out and "# Instructions\n\nBe terse.<|end|>" in out
    assert out.endswith("<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant\n")


def cli(tmp_path, args, script=None, stdin=""):
    return subprocess.run(gptoss_command() + args, input=stdin, capture_output=True, text=True, timeout=120,
                          env=chat_env(tmp_path, script))


def test_the_real_command_in_a_pipe(tmp_path):
    script = write_script(tmp_path / "s.json", [ANSWER])
    done = cli(tmp_path, ["run", "--no-python"], script, stdin="What is 2+2?")
    assert (done.returncode, done.stdout, done.stderr) == (0, "2 + 2 = **4**\n", "")


def test_errors_are_one_message_with_an_exit_code(tmp_path):
    missing = cli(tmp_path, ["run", "--model", "gpt-oss-120b", "hi"])
    assert missing.returncode == 3 and "gptoss pull gpt-oss-120b" in missing.stderr and missing.stdout == ""
    usage = cli(tmp_path, ["run", "--effort", "extreme", "hi"])
    assert usage.returncode == 2 and "low, medium or high" in usage.stderr
    tight = write_script(tmp_path / "tight.json", [ANSWER], context_length=64)
    full = cli(tmp_path, ["run", "--no-python", "hi"], tight)
    assert full.returncode == 1 and "the context holds 64" in full.stderr and "Traceback" not in full.stderr


def test_tiny_real_model_json_run(tmp_path, tiny_chat_model):
    done = cli(tmp_path, ["run", "--model", str(tiny_chat_model), "--device", "cpu", "--no-python", "--json",
                          "--max-tokens", "5", "--seed", "0", "hello"])
    assert done.returncode == EXIT_TRUNCATED, done.stderr
    result = json.loads(done.stdout)
    jsonschema.validate(result, RESULT_SCHEMA)
    assert result["finish_reason"] == "length" and result["usage"]["completion_tokens"] == 5
    assert result["timings"]["load_seconds"] > 0 and result["model"] == tiny_chat_model.name
