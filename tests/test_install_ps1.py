"""install.ps1 parsed and linted without PowerShell (none can be installed here): the tree-sitter PowerShell
grammar parses it, and the parse tree is checked for what PSScriptAnalyzer would catch first in a script that
never ran: typos in command names, unused functions, variables used once, unapproved verbs, and syntax that
Windows PowerShell 5.1 (the one every Windows PC has) does not know."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ts = pytest.importorskip("tree_sitter", reason="tree-sitter is not installed (it comes with pip install -e '.[test]')")
tsp = pytest.importorskip("tree_sitter_powershell",
                          reason="tree-sitter-powershell is not installed (it comes with pip install -e '.[test]')")

SCRIPT = Path(__file__).resolve().parents[1] / "install.ps1"
# Cmdlets of Windows PowerShell 5.1 the script may call; anything else must be defined in the script.
BUILTIN = {"Add-Type", "ConvertFrom-Json", "Copy-Item", "ForEach-Object", "Get-ChildItem", "Get-Command", "Join-Path",
           "New-Item", "New-Object", "Out-Null", "Out-String", "Remove-Item", "Select-Object", "Set-StrictMode",
           "Test-Path", "Where-Object", "Write-Host"}
APPROVED_VERBS = {"Add", "Clear", "Copy", "Find", "Get", "Join", "New", "Remove", "Set", "Split", "Send", "Write",
                  "ConvertTo", "ConvertFrom", "Install", "Uninstall", "Invoke", "Test", "Resolve", "Update", "Read"}
AUTOMATIC = {"null", "true", "false", "_", "lastexitcode", "psscriptroot", "erroractionpreference",
             "progresspreference"}


@pytest.fixture(scope="module")
def tree() -> tuple[bytes, object]:
    source = SCRIPT.read_bytes()
    return source, ts.Parser(ts.Language(tsp.language())).parse(source)


def nodes(node: object, kind: str) -> list[object]:
    found = [node] if node.type == kind else []
    for child in node.children:
        found += nodes(child, kind)
    return found


def text(source: bytes, node: object) -> str:
    return source[node.start_byte:node.end_byte].decode()


def test_the_script_parses(tree) -> None:
    source, parsed = tree
    broken = nodes(parsed.root_node, "ERROR")
    assert not parsed.root_node.has_error, [(n.start_point, text(source, n)[:80]) for n in broken]


def test_the_linter_would_notice_a_broken_script() -> None:
    parser = ts.Parser(ts.Language(tsp.language()))
    assert parser.parse(b'function f { if ($x -eq 1) { "a" \n').root_node.has_error


def test_every_command_exists_and_every_function_is_used(tree) -> None:
    source, parsed = tree
    defined = {text(source, n) for n in nodes(parsed.root_node, "function_name")}
    called = {text(source, n) for n in nodes(parsed.root_node, "command_name") if "-" in text(source, n)}
    assert called - defined - BUILTIN == set(), "unknown commands (typos?)"
    assert defined - called == set(), "functions nobody calls"
    assert all(name.split("-")[0] in APPROVED_VERBS for name in defined)


def test_no_variable_is_used_only_once(tree) -> None:
    source, parsed = tree
    names = Counter(text(source, n).lstrip("$").lower() for n in nodes(parsed.root_node, "variable"))
    single = {n for n, count in names.items() if count == 1 and n not in AUTOMATIC and ":" not in n}
    assert not single, f"assigned but never read, or read but never assigned: {single}"


def test_only_windows_powershell_5_1_syntax() -> None:
    code = [line.split(" #")[0] for line in SCRIPT.read_text(encoding="utf-8").splitlines()
            if not line.lstrip().startswith("#")]
    for pattern, what in ((r"\?\?", "null-coalescing ?? (PowerShell 7)"), (r"\?\.", "?. (PowerShell 7)"),
                          (r"&&|\|\|", "pipeline chain && / || (PowerShell 7)"),
                          (r"-Parallel\b", "ForEach-Object -Parallel (PowerShell 7)")):
        hits = [line for line in code if re.search(pattern, line)]
        assert not hits, f"{what}: {hits}"
    assert SCRIPT.read_bytes().isascii(), "non-ASCII in a BOM-less script is read as ANSI by PowerShell 5.1"
