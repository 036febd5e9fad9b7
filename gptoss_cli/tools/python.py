"""The harmony ``python`` tool: the model's code runs in a separate, stateful worker process.

The model is told (harmony's python description) that its code runs in "a stateful Jupyter notebook
environment" and that python "will respond with the output of the execution or time out after 120.0 seconds".
So, as in gpt-oss's local Jupyter backend, the answer is everything printed (stdout and stderr, in order), then
the value of the last expression, then a traceback if the code failed, or a warning when nothing came out.

Isolation. The code never runs in the gptoss process: a worker (``python -I -u _pyworker.py``, the same
interpreter, isolated mode) executes it with ``exec`` in a globals dict that persists for the session. It runs
in a per-session working directory (a temporary folder, removed by ``close()``; it survives ``restart()``), with
an environment stripped of variables that look like secrets (TOKEN, KEY, SECRET, PASSWORD, CREDENTIAL in the
name). It is *not* a security sandbox: the code runs as the user, can read and write the user's files and reach
the network. Approval (``approval.py``) is what stands between the model and the machine.

Limits, and what each OS enforces:

- Wall-clock timeout (all OSes): past ``timeout_s`` the worker and the processes it started are killed; the
  model gets the output so far and "timed out after N s; the Python state was reset". Linux/macOS kill the
  worker's process group (a child that starts its own session escapes); Windows terminates the worker's Job
  Object, which holds every descendant.
- Memory (Linux, kernel 4.7+): ``RLIMIT_DATA``, which counts the heap and private writable mappings (memory the
  code can fill), set on the worker with ``prlimit`` right after it starts, before it runs any code; children
  inherit it. An allocation beyond it fails, so the code gets ``MemoryError`` and the session goes on. Not
  ``RLIMIT_AS``: it also counts address space that is only reserved (each thread's 64 MiB malloc arena, CUDA),
  so threads and libraries fail long before the memory is used. Not ``preexec_fn``: it is unsafe in a process with
  threads, as gptoss is. Windows: a Job Object with ``JOB_OBJECT_LIMIT_PROCESS_MEMORY`` (committed memory per
  process, same effect) and ``KILL_ON_JOB_CLOSE``. macOS: not enforced (its kernel ignores these limits).
- Output (all OSes): printed output is written to a file as it comes (so it survives a crash) and cut to
  ``output_chars`` (first two thirds, last third, a marker between); past 8 MiB per call the worker stops
  writing Python-level output and only counts it. Output of child processes and C code goes to the same file,
  bounded only by the timeout. What a background thread prints between calls is dropped.
- Crash (all OSes): if the worker dies (``os._exit``, a segfault, killed for memory), the model is told how it
  ended and that the state was reset; the next call starts a fresh worker.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gptoss_cli.tools.call import clip

WORKER = Path(__file__).with_name("_pyworker.py")
NO_OUTPUT = "[WARN] No output available. Use print() to output anything to stdout to receive the output"
_SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")
# How long a killed or exiting worker gets to be reaped before we stop waiting.
_REAP_S = 5.0


@dataclass(frozen=True)
class PythonLimits:
    timeout_s: float = 120.0  # what harmony's python description promises the model
    memory_bytes: int | None = 4 * 1024**3  # None: no limit
    output_chars: int = 20_000


@dataclass(frozen=True)
class PythonOutcome:
    text: str  # what the model sees
    is_error: bool = False  # the code raised, timed out, or the worker died
    reset: bool = False  # the worker's state was lost (timeout or crash)


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: ours without secrets, with a non-interactive matplotlib backend."""
    source = dict(os.environ if environ is None else environ)
    env = {k: v for k, v in source.items() if not any(m in k.upper() for m in _SECRET_MARKERS)}
    env["MPLBACKEND"] = "Agg"
    return env


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "stopped responding"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    if sys.platform == "win32" and returncode >= 0xC0000000:
        return f"crashed (exception 0x{returncode:08X})"
    return f"exited with code {returncode}"


class _Worker:
    """One worker process: its pipes, its output file, and a thread that turns its replies into a queue."""

    def __init__(self, python: str, workdir: Path, memory_bytes: int | None) -> None:
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        # The worker writes this file through its own handle (it truncates it at each request); we read it
        # through another, so our reads never move the worker's write position.
        fd, self.output_path = tempfile.mkstemp(prefix="gptoss-python-out-", suffix=".txt")
        try:
            with os.fdopen(fd, "wb") as sink:
                self.proc = subprocess.Popen(
                    [python, "-I", "-u", str(WORKER)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=sink,
                    cwd=workdir,
                    env=child_environment(),
                    **kwargs,
                )
        except BaseException:
            os.unlink(self.output_path)
            raise
        self.output: IO[bytes] = open(self.output_path, "rb", buffering=0)
        self._job = None
        try:
            self._confine(memory_bytes)
        except BaseException:
            self.kill()
            self.close()
            raise
        self.replies: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read_replies, name="gptoss-python-replies", daemon=True).start()

    def _confine(self, memory_bytes: int | None) -> None:
        if sys.platform == "win32":
            from gptoss_cli.tools.winjob import Job

            self._job = Job(self.proc.pid, memory_bytes)
        elif memory_bytes is not None and sys.platform.startswith("linux"):
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            soft = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
            resource.prlimit(self.proc.pid, resource.RLIMIT_DATA, (soft, hard))

    def _read_replies(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.replies.put(line)
        self.replies.put(None)

    def send(self, request: dict[str, Any]) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except OSError:  # the worker is gone (BrokenPipeError, or EINVAL on Windows)
            return False

    def read_output(self, max_chars: int) -> tuple[str, str, int]:
        """What was printed since the last request, as (head, tail, bytes between them not read)."""
        size = os.fstat(self.output.fileno()).st_size
        self.output.seek(0)
        if size <= 2 * max_chars:
            return self.output.read(size).decode("utf-8", "replace"), "", 0
        head = self.output.read(max_chars).decode("utf-8", "ignore")
        self.output.seek(size - max_chars)
        tail = self.output.read(max_chars).decode("utf-8", "ignore")
        return head, tail, size - 2 * max_chars

    def kill(self) -> None:
        """Kill the worker and everything it started, and reap it (its exit status stays as it was)."""
        if self._job is not None:
            self._job.terminate()
        elif hasattr(os, "killpg"):
            try:  # before the wait below: until the worker is reaped its pid, and so its group id, is not reused
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(_REAP_S)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Release what the worker left: its stdin, job and output file (the reader thread closes stdout)."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self._job is not None:
            self._job.close()
            self._job = None
        self.output.close()
        try:
            os.unlink(self.output_path)
        except OSError:  # Windows: a process that escaped the kill still holds it
            pass


class PythonTool:
    """The python tool of one chat session: one worker at a time, started on the first call.

    ``run(code)`` never raises for anything the code does; it returns what the model should read. A
    ``KeyboardInterrupt`` while it waits (the user's Ctrl+C) kills the worker, so the state is reset, and is
    raised again. Calls are serialized. Call ``close()`` (or use ``with``) when the session ends; an unclosed
    tool is cleaned up when it is garbage collected or at interpreter exit.
    """

    name = "python"

    def __init__(
        self,
        limits: PythonLimits = PythonLimits(),
        *,
        python: str = sys.executable,
        workdir: Path | None = None,
    ) -> None:
        self.limits = limits
        self._python = python
        own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="gptoss-python-")) if workdir is None else Path(workdir)
        self._workers: list[_Worker] = []  # the running worker, if any (a list the finalizer can share)
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shut_down, self._workers, self.workdir if own_workdir else None)

    def run(self, code: str) -> PythonOutcome:
        with self._lock:
            note = ""
            if self._workers and self._workers[0].proc.poll() is not None:
                how = describe_exit(self._workers[0].proc.returncode)
                note = f"[NOTE] The python process {how} after the last call; the Python state was reset.\n"
                self._stop()
            if not self._workers:
                try:
                    self._workers.append(_Worker(self._python, self.workdir, self.limits.memory_bytes))
                except OSError as exc:
                    return PythonOutcome(f"{note}[ERROR] Could not start python: {exc}", is_error=True, reset=True)
            worker = self._workers[0]
            if not worker.send({"code": code}):
                return self._ended(worker, note, None)
            try:
                line = worker.replies.get(timeout=self.limits.timeout_s)
            except queue.Empty:
                message = f"[ERROR] Execution timed out after {self.limits.timeout_s:g} s; the Python state was reset."
                return self._ended(worker, note, message)
            except BaseException:  # Ctrl+C: stop the code, or its late reply would answer the next call
                self._stop()
                raise
            try:
                reply = json.loads(line) if line is not None else None
            except ValueError:
                reply = None
            if not isinstance(reply, dict):
                return self._ended(worker, note, None)
            head, tail, omitted = worker.read_output(self.limits.output_chars)
            omitted += int(reply.get("dropped") or 0)
            text = clip(head, self.limits.output_chars, tail=tail, omitted=omitted)
            text = text if text.strip() else NO_OUTPUT
            return PythonOutcome(note + text, is_error=bool(reply.get("error")), reset=bool(note))

    def _ended(self, worker: _Worker, note: str, message: str | None) -> PythonOutcome:
        """The worker timed out (``message`` says so) or died: kill it, report its output so far and its end."""
        worker.kill()
        if message is None:
            message = f"[ERROR] The python process {describe_exit(worker.proc.returncode)}; the Python state was reset."
        head, tail, omitted = worker.read_output(self.limits.output_chars)
        self._stop()
        text = clip(head, self.limits.output_chars, tail=tail, omitted=omitted)
        if text and not text.endswith("\n"):
            text += "\n"
        return PythonOutcome(note + text + message, is_error=True, reset=True)

    def restart(self) -> None:
        """Forget all state (variables, imports); files in the working directory stay."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        _shut_down(self._workers, None)

    def close(self) -> None:
        """Stop the worker and remove the working directory this tool created."""
        with self._lock:
            self._finalizer()

    def __enter__(self) -> PythonTool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _shut_down(workers: list[_Worker], workdir: Path | None) -> None:
    while workers:
        worker = workers.pop()
        worker.kill()
        worker.close()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
