"""How the store's commands look: the summary before a pull, progress while it runs, and ``list`` / ``show`` /
``rm``. Progress is a rich display (bytes, speed, ETA) when stderr is a terminal and plain lines otherwise, so
logs and CI stay readable. Sizes are binary GB (1 GB = 2**30 bytes), as for ``--vram``: a 16 GB card reads 16 GB.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text

from . import settings, store
from .errors import ModelNotFoundError, UsageError
from .model.config import GptOssConfig


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def age(timestamp: float | None, now: float | None = None) -> str:
    """'3 hours ago', for the last-used column."""
    if timestamp is None:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - timestamp)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def placement_summary(config: GptOssConfig, name: str) -> tuple[bool, list[str]]:
    """Whether and how the model would run on this machine: the planner's verdict, from the config alone."""
    from .hardware import detect
    from .plan import make_plan
    from .sizes import tensor_sizes

    plan = make_plan(config, tensor_sizes(config), detect(), model=name)
    if not plan.fits:
        lines = [f"[bold yellow]will not run here[/]: {plan.refusal_reason}"]
        return False, lines + [f"  would fit with: {s}" for s in plan.suggestions]
    where = plan.gpu_name or "the CPU"
    head = (f"runs on {where}: {len(plan.experts_on_gpu)} of {config.num_hidden_layers} layers' experts on the "
            f"GPU, {plan.context_length // 1024}k context, about {plan.est_decode_tok_s:.0f} tokens/s")
    if plan.device == "cpu":
        head = f"runs on the CPU: {plan.context_length // 1024}k context, about {plan.est_decode_tok_s:.0f} tokens/s"
    return True, [head] + [f"[dim]  {note}[/]" for note in plan.notes]


def _console(stderr: bool = False) -> Console:
    """A console that wraps for a terminal and writes whole lines for a pipe or a log."""
    console = Console(stderr=stderr, highlight=False)
    console.soft_wrap = not console.is_terminal
    return console


def _local_time(iso: str | None) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M") if iso else "?"


# ---- pull -------------------------------------------------------------------------------------------------------
def pull_summary(plan: store.PullPlan) -> tuple[bool, list[str]]:
    """What a pull is about to do, shown before any large download, and whether the model fits this machine."""
    ref = plan.ref
    if ref.local_dir is not None:
        head = f"Registering [bold]{ref.name}[/] from {plan.path}"
    else:
        commit = f", commit {plan.commit[:8]}" if plan.commit else ""
        head = f"[bold]{ref.name}[/] ({ref.repo_id} @ {ref.revision}{commit})"
    lines = [head]
    if plan.up_to_date:
        return True, lines + [f"  up to date in {plan.path}"]
    if plan.source in ("hf-cache", "local"):
        where = "already in the Hugging Face cache" if plan.source == "hf-cache" else "a local directory"
        lines.append(f"  {human_bytes(plan.total_bytes)}, {where}: nothing to download")
    else:
        size = f"  size       {human_bytes(plan.total_bytes)} in {len(plan.files)} files"
        if plan.download_bytes != plan.total_bytes:
            size += f"; {human_bytes(plan.download_bytes)} left to download"
        if plan.partial_bytes:
            size += f" ({human_bytes(plan.partial_bytes)} kept from an interrupted pull)"
        if plan.from_hf_cache:
            size += f" ({len(plan.from_hf_cache)} files copied from the Hugging Face cache)"
        lines.append(size)
        lines.append(f"  disk       {human_bytes(plan.free_bytes)} free in {plan.entry_dir.parent}")
    fits, (first, *rest) = placement_summary(plan.config, ref.name)
    return fits, lines + [f"  this PC    {first}"] + [f"           {line}" for line in rest]


class _BytesColumn(ProgressColumn):
    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        return Text(f"{human_bytes(int(task.completed))} of {human_bytes(int(task.total or 0))}")


class _SpeedColumn(ProgressColumn):
    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{human_bytes(int(speed))}/s" if speed else "")


class RichPullReporter:
    """A total bar and one bar per file of 1 MB or more, with bytes, speed and time left."""

    ROW = 1 << 20  # smaller files (config, template) only count toward the total

    def __init__(self, console: Console, plan: store.PullPlan) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), _BytesColumn(), _SpeedColumn(),
                                  TimeRemainingColumn(), console=console)
        self._total = self._progress.add_task("[bold]total[/]", total=plan.download_bytes + plan.partial_bytes,
                                              completed=plan.partial_bytes, visible=plan.download_bytes > 0)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichPullReporter:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def start(self, name: str, size: int, done: int) -> None:
        self._tasks[name] = self._progress.add_task(name, total=size, completed=done, visible=size >= self.ROW)

    def advance(self, name: str, nbytes: int) -> None:
        self._progress.update(self._tasks[name], advance=nbytes)
        self._progress.update(self._total, advance=nbytes)

    def verifying(self, name: str) -> None:
        self._progress.update(self._tasks[name], description=f"{name} [dim](verifying)[/]")

    def finish(self, name: str, note: str) -> None:
        if name in self._tasks:
            self._progress.update(self._tasks[name], description=f"[green]✓[/] {name} [dim]({note})[/]")


class LinePullReporter:
    """Plain lines for logs: a large file gets a line when it starts, at each quarter and when it is verified;
    a small one gets a single line."""

    LARGE = 64 << 20

    def __init__(self, console: Console) -> None:
        self._console = console
        self._files: dict[str, tuple[int, int, int, float]] = {}  # name -> (size, done, quarters shown, start)

    def __enter__(self) -> LinePullReporter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def start(self, name: str, size: int, done: int) -> None:
        self._files[name] = (size, done, 4 * done // size if size else 4, time.monotonic())
        if size >= self.LARGE:
            resume = f", resuming at {human_bytes(done)}" if done else ""
            self._console.print(f"downloading {name} ({human_bytes(size)}{resume})")

    def advance(self, name: str, nbytes: int) -> None:
        size, done, shown, began = self._files[name]
        done += nbytes
        quarter = 4 * done // size if size else 4
        if size >= self.LARGE and shown < quarter < 4:
            self._console.print(f"  {name}: {25 * quarter}% ({human_bytes(done)} of {human_bytes(size)})")
            shown = quarter
        self._files[name] = (size, done, shown, began)

    def verifying(self, name: str) -> None:
        if self._files[name][0] >= self.LARGE:
            self._console.print(f"  {name}: verifying sha256")

    def finish(self, name: str, note: str) -> None:
        size, done, _, began = self._files.get(name, (0, 0, 0, time.monotonic()))
        if size >= self.LARGE:
            rate = human_bytes(int(done / max(time.monotonic() - began, 1e-3)))
            self._console.print(f"  {name}: done ({note}, {rate}/s)")
        else:
            self._console.print(f"{name}" + (f" ({human_bytes(size)}, {note})" if size else f" ({note})"))


def run_pull(name: str, models_dir: str | None = None) -> store.StoredModel | None:
    """``gptoss pull``: show what will happen, then do it with progress; tell how to resume when stopped.
    On a terminal, a download of a model that will not run here needs a yes first (None when declined)."""
    from rich.prompt import Confirm

    out, err = _console(), _console(stderr=True)
    ref = store.parse_ref(name)
    plan = store.prepare_pull(ref, models_dir)
    fits, lines = pull_summary(plan)
    for line in lines:
        out.print(line)
    if not fits and plan.download_bytes > 0 and out.is_terminal and sys.stdin.isatty():
        if not Confirm.ask(f"Download {human_bytes(plan.download_bytes)} anyway?", default=False, console=out):
            out.print("nothing downloaded")
            return None
    reporter = RichPullReporter(err, plan) if err.is_terminal else LinePullReporter(err)
    try:
        with reporter:
            model = store.pull(plan, reporter)
    except KeyboardInterrupt:
        err.print(f"\nstopped: what arrived is kept; run `gptoss pull {ref.name}` to resume")
        raise
    if not plan.up_to_date:
        verb = "registered" if plan.source in ("local", "hf-cache") else "ready"
        out.print(f"[green]{verb}[/]: {model.name} ({human_bytes(model.size_bytes)}) in {model.path}")
    return model


# ---- list / show / rm -------------------------------------------------------------------------------------------
def run_list(models_dir: str | None = None, as_json: bool = False) -> None:
    models = store.list_models(models_dir)
    if as_json:
        print(json.dumps([m.to_json() for m in models], indent=2))
        return
    out = _console()
    if not models:
        out.print(f"no models in {settings.models_dir(models_dir)}; start with `gptoss pull gpt-oss-20b`")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "SIZE", "LAST USED", "LOCATION"):
        table.add_column(column, no_wrap=column != "LOCATION")
    for m in models:
        size = human_bytes(m.size_bytes) if m.complete else \
            f"{human_bytes(m.disk_bytes())} of {human_bytes(m.size_bytes)} (incomplete)"
        table.add_row(m.name, size, age(m.last_used), str(m.path))
    out.print(table)


def run_show(name: str, models_dir: str | None = None) -> None:
    model = store.find_model(name, models_dir)
    if model is None:
        raise ModelNotFoundError(f"no model {name!r} in {settings.models_dir(models_dir)}",
                                 hint=f"run `gptoss pull {name}`, or `gptoss list` to see what is there")
    out = _console()
    source = {"hub": "downloaded by gptoss", "hf-cache": "in the Hugging Face cache (shared with other tools)",
              "local": "a registered local directory"}.get(model.source, model.source)
    out.print(f"[bold]{model.name}[/]" + ("" if model.complete else " [yellow](incomplete)[/]"))
    if model.repo_id:
        out.print(f"  from       {model.repo_id} @ {model.revision}, commit {(model.commit or '?')[:12]}")
    out.print(f"  location   {model.path} ({source})")
    out.print(f"  disk use   {human_bytes(model.disk_bytes())} of {human_bytes(model.size_bytes)}")
    out.print(f"  pulled     {_local_time(model.pulled_at)}; last used {age(model.last_used)}")
    config_file = model.path / "config.json"
    if config_file.is_file():
        c = GptOssConfig.from_file(config_file)
        out.print(f"  model      {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
                  f"{c.num_attention_heads} query / {c.num_key_value_heads} key-value heads, "
                  f"{c.num_local_experts} experts ({c.num_experts_per_tok} active), "
                  f"context {c.max_position_embeddings // 1024}k, vocabulary {c.vocab_size}")
        _, (first, *rest) = placement_summary(c, model.name)
        out.print(f"  this PC    {first}")
        for line in rest:
            out.print(f"           {line}")
    table = Table(box=None, pad_edge=False, title=None)
    for column in ("  FILE", "SIZE", "HASH"):
        table.add_column(column, no_wrap=True)
    for f in model.files:
        digest = f"sha256 {f.sha256[:16]}…" if f.sha256 else f"git {f.git_oid[:16]}…" if f.git_oid else ""
        table.add_row(f"  {f.name}", human_bytes(f.size), digest)
    out.print(table)


def run_rm(name: str, models_dir: str | None = None, yes: bool = False) -> None:
    from rich.prompt import Confirm

    model = store.find_model(name, models_dir)
    if model is None:
        store.remove_model(name, models_dir)  # raises the not-found error with its hint
        return
    out = _console()
    owned = model.source == "hub"
    what = (f"delete {model.name} ({human_bytes(model.disk_bytes())} in {model.path})" if owned else
            f"forget {model.name} (its files in {model.path} stay where they are)")
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to {what} without confirmation", hint="pass --yes")
        if not Confirm.ask(what[0].upper() + what[1:] + "?", default=False, console=out):
            out.print("nothing removed")
            return
    store.remove_model(name, models_dir)
    out.print(f"removed {model.name}" + ("" if owned else f"; {Path(model.path)} is untouched"))
