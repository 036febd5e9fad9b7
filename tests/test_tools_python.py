"""The python tool: a stateful worker process with a timeout, a memory limit, an output cap and crash recovery."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from gptoss_cli.tools import winjob
from gptoss_cli.tools.python import NO_OUTPUT, PythonLimits, PythonTool, child_environment, describe_exit

MiB = 1024**2


@pytest.fixture
def tool():
    with PythonTool(PythonLimits(timeout_s=10, memory_bytes=1024 * MiB, output_chars=2000)) as python:
        yield python


def _alive(pid: int) -> bool:
    """Running, not a zombie nobody reaped yet (containers often have no init that reaps)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        return "\nState:\tZ" not in status.read_text()
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def test_state_persists_between_calls(tool):
    assert tool.run("x = 41\nimport math").text == NO_OUTPUT
    outcome = tool.run("x + 1")
    assert outcome.text == "42\n"
    assert not outcome.is_error
    assert tool.run("math.sqrt(16)").text == "4.0\n"


def test_output_then_last_expression_like_jupyter(tool):
    assert tool.run("print('a')\nimport sys\nprint('b', file=sys.stderr)\n1 + 1").text == "a\nb\n2\n"
    assert tool.run("1 + 1;").text == NO_OUTPUT  # a trailing semicolon hides the value, as in Jupyter
    assert tool.run("None").text == NO_OUTPUT


def test_output_of_child_processes_and_raw_fds_is_captured_in_order(tool):
    code = (
        "import os, subprocess, sys\n"
        "print('one')\n"
        "os.write(1, b'two\\n')\n"
        "subprocess.run([sys.executable, '-c', 'print(\"three\")'])\n"
        "print('four')"
    )
    assert tool.run(code).text == "one\ntwo\nthree\nfour\n"


def test_errors_come_back_as_a_traceback_of_the_users_code(tool):
    outcome = tool.run("def f():\n    return 1 / 0\nf()")
    assert outcome.is_error and not outcome.reset
    assert 'File "<cell 1>", line 2, in f' in outcome.text
    assert outcome.text.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "_pyworker" not in outcome.text
    assert "SyntaxError" in tool.run("def (:").text
    assert tool.run("f.__name__").text == "'f'\n"  # the session survived both


def test_sys_exit_and_input_do_not_end_the_session(tool):
    tool.run("kept = 1")
    assert "SystemExit: 3" in tool.run("import sys\nsys.exit(3)").text
    assert "EOFError" in tool.run("input()").text
    assert tool.run("kept").text == "1\n"


def test_user_code_cannot_reach_the_protocol(tool):
    # A fake reply on fd 1 and a read of fd 0 (where requests arrive) must not derail the worker.
    outcome = tool.run('import os\nos.write(1, b\'{"error": true, "dropped": 0}\\n\')\nos.read(0, 100)')
    assert outcome.text == '{"error": true, "dropped": 0}\nb\'\'\n'
    assert not outcome.is_error
    assert tool.run("2 * 21").text == "42\n"


def test_restart_clears_state_but_keeps_files(tool):
    tool.run("x = 1\nopen('notes.txt', 'w').write('kept')")
    tool.restart()
    assert "NameError" in tool.run("x").text
    assert tool.run("open('notes.txt').read()").text == "'kept'\n"


def test_infinite_loop_is_stopped_at_the_timeout():
    with PythonTool(PythonLimits(timeout_s=1)) as tool:
        tool.run("x = 1")
        start = time.monotonic()
        outcome = tool.run("print('working', flush=True)\nwhile True:\n    pass")
        elapsed = time.monotonic() - start
        assert 1 <= elapsed < 6
        assert outcome.is_error and outcome.reset
        assert outcome.text == "working\n[ERROR] Execution timed out after 1 s; the Python state was reset."
        assert "NameError" in tool.run("x").text  # a fresh worker answers the next call
        assert tool.run("1 + 1").text == "2\n"


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX; Windows uses a Job Object")
def test_timeout_also_kills_processes_the_code_started(tmp_path):
    pid_file = tmp_path / "pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)"
    )
    with PythonTool(PythonLimits(timeout_s=2)) as tool:
        assert "timed out" in tool.run(code).text
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") or sys.platform == "win32"),
    reason="the memory limit is enforced on Linux (RLIMIT_DATA) and Windows (Job Object) only",
)
def test_memory_bomb_is_stopped_by_the_limit():
    with PythonTool(PythonLimits(timeout_s=20, memory_bytes=512 * MiB)) as tool:
        start = time.monotonic()
        outcome = tool.run("hog = []\nwhile True:\n    hog.append(bytearray(32 * 2**20))")
        assert time.monotonic() - start < 15
        assert outcome.is_error
        assert "MemoryError" in outcome.text
        assert tool.run("del hog\n'still here'").text == "'still here'\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA is how Linux enforces the limit")
def test_the_limit_caps_memory_not_reserved_address_space():
    with PythonTool(PythonLimits(memory_bytes=768 * MiB)) as tool:
        assert tool.run("import resource\nresource.getrlimit(resource.RLIMIT_DATA)[0]").text == f"{768 * MiB}\n"
        # 48 threads that allocate reserve a 64 MiB malloc arena each: far over 768 MiB of address space (so
        # RLIMIT_AS would refuse them), far less memory.
        code = (
            "import threading, time\n"
            "done = []\n"
            "def work():\n"
            "    kept = [bytearray(100) for _ in range(2000)]\n"
            "    time.sleep(0.2)\n"
            "    done.append(len(kept))\n"
            "threads = [threading.Thread(target=work) for _ in range(48)]\n"
            "[t.start() for t in threads]\n"
            "[t.join() for t in threads]\n"
            "len(done)"
        )
        assert tool.run(code).text == "48\n"


def test_huge_output_is_truncated_keeping_both_ends():
    with PythonTool(PythonLimits(timeout_s=20, output_chars=1000)) as tool:
        outcome = tool.run("print('start')\nprint('x' * 5_000_000)\nprint('end')")
        assert len(outcome.text) < 1100
        assert outcome.text.startswith("start\nxxx")
        assert outcome.text.endswith("xxx\nend\n")
        assert "[... output truncated: " in outcome.text
        big = tool.run("list(range(200_000))").text  # a huge value is cut the same way
        assert len(big) < 1100 and big.startswith("[0, 1, 2") and big.endswith("199999]\n")


def test_a_traceback_survives_truncation():
    with PythonTool(PythonLimits(timeout_s=20, output_chars=1000)) as tool:
        outcome = tool.run("for i in range(100_000):\n    print(i)\nraise KeyError('at the end')")
        assert outcome.text.startswith("0\n1\n2\n")
        assert outcome.text.rstrip().endswith("KeyError: 'at the end'")


@pytest.mark.parametrize(
    ("code", "how"),
    [
        ("import os\nos._exit(3)", "exited with code 3"),
        ("import ctypes\nctypes.string_at(0)", "SIGSEGV" if sys.platform != "win32" else "0xC0000005"),
    ],
    ids=["os._exit", "segfault"],
)
def test_a_crash_is_reported_and_the_next_call_works(tool, code, how):
    tool.run("x = 1")
    outcome = tool.run(f"print('before the crash', flush=True)\n{code}")
    assert outcome.is_error and outcome.reset
    assert outcome.text.startswith("before the crash\n[ERROR] The python process ")
    assert how in outcome.text
    assert outcome.text.endswith("the Python state was reset.")
    assert tool.run("1 + 1").text == "2\n"
    assert "NameError" in tool.run("x").text


def test_a_worker_that_died_between_calls_is_replaced_and_reported(tool):
    tool.run("import os, threading\nthreading.Timer(0.05, lambda: os._exit(7)).start()")
    time.sleep(1)
    outcome = tool.run("'fresh'")
    assert outcome.text == (
        "[NOTE] The python process exited with code 7 after the last call; the Python state was reset.\n'fresh'\n"
    )
    assert outcome.reset


@pytest.mark.skipif(sys.platform == "win32", reason="sends itself SIGINT, as Ctrl+C does on POSIX")
def test_ctrl_c_during_a_call_stops_the_code_and_leaves_no_stale_reply(tool):
    tool.run("x = 1")
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        tool.run("import time\ntime.sleep(3)\n'stale'")
    assert time.monotonic() - start < 2
    assert tool.run("'fresh'").text == "'fresh'\n"
    assert "NameError" in tool.run("x").text


def test_each_session_has_its_own_working_directory_removed_on_close():
    first, second = PythonTool(), PythonTool()
    try:
        assert first.workdir != second.workdir
        assert first.run("import os\nos.getcwd()").text == f"{str(first.workdir)!r}\n"
    finally:
        first.close()
        second.close()
    assert not first.workdir.exists() and not second.workdir.exists()


def test_secrets_are_kept_out_of_the_worker(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("GPTOSS_PLAIN", "visible")
    assert "HF_TOKEN" not in child_environment()
    assert child_environment({"OPENAI_API_KEY": "k", "PATH": "/bin"}) == {"PATH": "/bin", "MPLBACKEND": "Agg"}
    with PythonTool() as tool:
        assert tool.run("import os\nos.environ.get('HF_TOKEN'), os.environ['GPTOSS_PLAIN']").text == (
            "(None, 'visible')\n"
        )


def test_a_python_that_cannot_start_is_an_error_result():
    with PythonTool(python=str(Path("/nonexistent/python"))) as tool:
        outcome = tool.run("1")
    assert outcome.is_error and outcome.text.startswith("[ERROR] Could not start python")


def test_exit_descriptions():
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(None) == "stopped responding"


@pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="the sizes checked are those of 64-bit Windows")
def test_job_object_structures_have_the_windows_x64_layout():
    info_type = winjob.JOBOBJECT_EXTENDED_LIMIT_INFORMATION
    assert ctypes.sizeof(winjob.JOBOBJECT_BASIC_LIMIT_INFORMATION) == 64
    assert ctypes.sizeof(winjob.IO_COUNTERS) == 48
    assert ctypes.sizeof(info_type) == 144
    assert info_type.ProcessMemoryLimit.offset == 112
    assert winjob.JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags.offset == 16
    info = winjob.limit_information(512 * MiB)
    assert info.ProcessMemoryLimit == 512 * MiB
    assert info.BasicLimitInformation.LimitFlags == 0x100 | 0x400 | 0x2000
    assert winjob.limit_information(None).BasicLimitInformation.LimitFlags == 0x400 | 0x2000
