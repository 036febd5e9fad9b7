"""The python tool's worker: a small Jupyter-like REPL, run as ``python -I -u _pyworker.py`` in its own process.

It imports nothing from gptoss (it runs isolated, ``-I``) and keeps one globals dict for the whole session, so
variables, imports and functions persist between calls, as the model expects.

Protocol, one request at a time. The parent writes one JSON line ``{"code": str}`` to our stdin; we run it and
answer with one JSON line ``{"error": bool, "dropped": int}`` on the pipe that was our stdout: whether the code
raised, and how many bytes of output went beyond the per-call budget. The output itself (what the code printed,
then the repr of its last expression, as Jupyter's ``Out``, then a traceback) is in the output file.

Before the first request we move both pipes off fds 0 and 1, so nothing user code does (``print``,
``os.write(1, ...)``, a child process, a C library) can reach the protocol: fds 1 and 2 both point at the output
file the parent passed as our stderr, fd 0 at the null device. Printed output therefore lands in that file as
it is written, in order, and survives a crash of this process. We empty the file when a request arrives; the
parent reads it through its own handle.
"""

import ast
import io
import json
import linecache
import os
import signal
import sys
import traceback

# Bytes of Python-level output written to the output file per call; the rest is counted, not stored, so a
# print loop cannot fill the disk before the timeout stops it.
FILE_BUDGET = 8 * 1024 * 1024


class Output(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` for user code: unbuffered writes to fd 1, within a budget per call."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.room = FILE_BUDGET
        self.dropped = 0
        self.buffer = os.fdopen(fd, "wb", buffering=0, closefd=False)

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "backslashreplace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def reset(self) -> None:
        self.room = FILE_BUDGET
        self.dropped = 0

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        data = text.encode("utf-8", "backslashreplace")
        keep = data[: max(self.room, 0)]
        self.room -= len(keep)
        self.dropped += len(data) - len(keep)
        view = memoryview(keep)
        while view:
            view = view[os.write(self._fd, view) :]
        return len(text)


def format_error(exc: BaseException) -> str:
    """A traceback of the user's code only (the first frame is ``run_cell``)."""
    try:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:  # formatting can fail too, e.g. right after a MemoryError
        return f"{type(exc).__name__}: {exc}\n"


def run_cell(code: str, namespace: dict, number: int) -> tuple:
    """Execute a cell; return (repr of the last expression or None, traceback or None)."""
    filename = f"<cell {number}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        tree = ast.parse(code, filename, "exec")
    except (SyntaxError, ValueError) as exc:
        return None, "".join(traceback.format_exception_only(type(exc), exc))
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
        last = ast.Expression(tree.body.pop().value)
    try:
        exec(compile(tree, filename, "exec"), namespace)
        if last is not None:
            value = eval(compile(last, filename, "eval"), namespace)
            if value is not None:
                namespace["_"] = value
                return repr(value), None
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the session goes on
        return None, format_error(exc)
    return None, None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us by killing, never by Ctrl+C
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    output = Output(1)
    namespace = {"__name__": "__main__"}
    for number, line in enumerate(requests, 1):
        request = json.loads(line)
        os.ftruncate(1, 0)  # the parent reads this call's output from the start of the file
        os.lseek(1, 0, os.SEEK_SET)
        output.reset()
        sys.stdout = sys.stderr = output
        sys.stdin = io.StringIO()
        value, error = run_cell(request["code"], namespace, number)
        dropped = output.dropped
        output.reset()  # the results get a budget of their own: a traceback must not be lost to a print loop
        for text in (value, error):
            if text is not None:
                output.write(text if text.endswith("\n") else text + "\n")
        dropped += output.dropped
        replies.write(json.dumps({"error": error is not None, "dropped": dropped}) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
