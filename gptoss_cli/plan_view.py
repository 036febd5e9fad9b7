"""A Plan as a rich table for people: what goes where, how much memory each side uses, the context,
the expected decode speed, and every decision the planner made."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .hardware import GiB
from .plan import Plan

_WHERE = {"gpu": "GPU", "cpu": "RAM"}


def _gb(n: int) -> str:
    return f"{n / GiB:.2f} GB" if n >= GiB // 10 else f"{n / (1 << 20):.1f} MB"


def render_plan(plan: Plan) -> Group:
    title = f"{plan.model or 'model'} on {plan.gpu_name if plan.device != 'cpu' else 'the CPU'}"
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("part")
    table.add_column("where")
    table.add_column("precision")
    table.add_column("size", justify="right")
    for part in plan.parts:
        table.add_row(part.name, _WHERE.get(part.where, part.where), part.precision, _gb(part.bytes))

    lines = []
    if plan.device != "cpu":
        lines.append(f"VRAM  {_gb(plan.gpu_bytes)} of {_gb(plan.vram_bytes)} free "
                     f"(keeps {_gb(plan.headroom_bytes)} headroom)")
    lines.append(f"RAM   {_gb(plan.host_bytes)} of {_gb(plan.ram_bytes)} available")
    if plan.fits:
        asked = f" (asked {plan.requested_context})" if plan.requested_context else ""
        lines.append(f"context  {plan.context_length} tokens{asked}")
        lines.append(f"decode   ~{plan.est_decode_tok_s:.0f} tokens/s (estimated from memory bandwidth)")
    summary = Text("\n".join(lines))
    notes = Text("\n".join(f"- {n}" for n in plan.notes), style="dim") if plan.notes else Text("")
    return Group(table, Text(""), summary, notes)
