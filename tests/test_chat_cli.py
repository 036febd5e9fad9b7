"""`gptoss chat` off a terminal, user function tools end to end, loading with a plan file, clear memory errors."""

from __future__ import annotations

import json
import subprocess

import pytest
from chat_support import chat_env, gptoss_command, write_script

from gptoss_cli.chat.loading import OutOfMemory, load_model, load_scripted, memory_errors

pytest_plugins = ("chat_fixtures",)

WEATHER_TOOLS = '''
def get_weather(city: str, unit: str = "celsius") -> dict:
    """Current weather for a city.

    Args:
        city: The city name.
        unit: celsius or fahrenheit.
    """
    return {"city": city, "temperature": 21, "unit": unit}
'''


def test_piped_chat_reads_one_message_or_command_per_line(tmp_path):
    (tmp_path / "tools.py").write_text(WEATHER_TOOLS)
    script = write_script(tmp_path / "s.json", [
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>',
        "<|channel|>final<|message|>It is 21 degrees in Oslo.<|return|>",
        "<|channel|>final<|message|>Brief.<|return|>",
    ])
    lines = ["Weather in Oslo?", "/system Be brief.", "/system", "And now?", f"/save {tmp_path / 'c.json'}",
             "/tools", "/exit", "never read"]
    done = subprocess.run(gptoss_command() + ["chat", "--no-python", "--tools", str(tmp_path / "tools.py"), "--yes"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120,
                          env=chat_env(tmp_path, script))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\x1b[" not in out  # plain text off a terminal
    assert "Tool call: functions.get_weather" in out and '"city": "Oslo"' in out
    assert '{"city": "Oslo", "temperature": 21, "unit": "celsius"}' in out
    assert "It is 21 degrees in Oslo." in out and "Brief." in out
    assert "developer instructions: Be brief." in out
    assert "functions.get_weather  runs without asking  Current weather for a city." in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["options"]["instructions"] == "Be brief."
    tool_results = [i["message"] for i in saved["items"] if "message" in i and i["message"]["role"] == "tool"]
    assert tool_results == [{"role": "tool", "name": "functions.get_weather", "channel": "commentary",
                             "content": '{"city": "Oslo", "temperature": 21, "unit": "celsius"}'}]


def test_piped_chat_denies_tools_without_yes(tmp_path):
    script = write_script(tmp_path / "s.json", ["<|channel|>analysis to=python<|message|>print(1)<|call|>",
                                                "<|channel|>final<|message|>Fine.<|return|>"])
    done = subprocess.run(gptoss_command() + ["chat"], input="run code\n", capture_output=True, text=True,
                          timeout=120, env=chat_env(tmp_path, script))
    assert done.returncode == 0
    assert "denied python: no terminal to ask on (start with --yes to allow tools)" in done.stdout
    assert "python denied:" in done.stdout and "Fine." in done.stdout


def test_a_plan_file_decides_the_context(tmp_path, tiny_chat_model):
    from gptoss_cli.hardware import HardwareOverride, detect
    from gptoss_cli.plan import Wishes, plan_for

    plan = plan_for(str(tiny_chat_model), detect(HardwareOverride.from_strings("0", None)), Wishes(context=1024))
    (tmp_path / "plan.json").write_text(plan.to_json())
    loaded = load_model(str(tiny_chat_model), device="cpu", plan_json=str(tmp_path / "plan.json"))
    assert loaded.context_length == 1024 and loaded.device == "cpu"
    assert load_model(str(tiny_chat_model), device="cpu").context_length == 2048  # the planner's choice


def test_out_of_memory_is_one_message_with_what_to_do():
    with pytest.raises(OutOfMemory, match="out of GPU memory while loading x") as info:
        with memory_errors("loading x", "gpt-oss-20b"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "--context" in info.value.hint and "gptoss plan gpt-oss-20b" in info.value.hint
    with pytest.raises(OutOfMemory, match="out of system memory"):
        with memory_errors("generating", "m"):
            raise MemoryError()
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors pass through untouched
        with memory_errors("generating", "m"):
            raise RuntimeError("shape mismatch")


def test_scripted_engine_hook_reads_text_and_ids(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"responses": ["<|channel|>final<|message|>Hi<|return|>", [1, 2]],
                                                  "context_length": 512, "delay": 0.5}))
    loaded = load_scripted("gpt-oss-20b", tmp_path / "s.json")
    first, second = loaded.engine.responses
    assert loaded.tokenizer.decode(first) == "<|channel|>final<|message|>Hi<|return|>" and second == [1, 2]
    assert loaded.context_length == 512 and loaded.engine.delay == 0.5 and "scripted" in loaded.label
