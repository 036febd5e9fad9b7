"""How ``gptoss doctor`` looks: one line per check (status, name, what was found), the advice under anything
that is not ok, and the next command. Plain words for the status, not symbols, so an old Windows console shows
them too."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from . import __version__
from .doctor import Facts, Report, gather, judge

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def render(report: Report, console: Console) -> None:
    console.print(f"gptoss {__version__} doctor")
    for check in report.checks:
        style = _STYLE[check.status]
        console.print(f"  [{style}]{check.status:<4}[/] {check.name:<7} {escape(check.detail)}", soft_wrap=True)
        if check.advice and check.status != "ok":
            console.print(f"               [dim]->[/] {escape(check.advice)}", soft_wrap=True)
    if report.usable:
        console.print(f"\n[bold green]Ready.[/] Next: [bold]{escape(report.next_command)}[/]")
    else:
        console.print(f"\n[bold red]Not ready:[/] fix what failed above. Next: [bold]{escape(report.next_command)}[/]")


def run_doctor(json_out: bool, models_dir: str | Path | None) -> int:
    """Gather, judge, print; the exit code is 0 when gptoss can run here, 1 when it cannot."""
    facts: Facts = gather(models_dir)
    report = judge(facts)
    if json_out:
        print(json.dumps(report.to_dict(facts), indent=2))
    else:
        render(report, Console(highlight=False))
    return 0 if report.usable else 1
