"""The ``gptoss`` command: Typer commands only. Each parses options, calls one function, prints, and
exits with a documented code. Heavy imports happen inside commands so ``--help`` stays fast."""

from __future__ import annotations

import os
import sys

import typer

from . import __version__
from .errors import ExitCode, GptossError

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 failure; 2 usage error; 3 model not found; 4 network unavailable; "
    "5 answer cut short (gptoss run); 130 interrupted (Ctrl-C)."
)

app = typer.Typer(
    name="gptoss",
    help=(
        "Local chat with OpenAI's gpt-oss-20b and gpt-oss-120b on your NVIDIA GPU.\n\n"
        "Start with `gptoss pull gpt-oss-20b`, then `gptoss chat`.\n\n" + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gptoss {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.", envvar="GPTOSS_DEBUG"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if debug:
        os.environ["GPTOSS_DEBUG"] = "1"


def _plan_ref(model: str) -> str:
    """Official names plan from built-in sizes (no download needed); anything else may be a pulled model."""
    from pathlib import Path

    from .plan import OFFICIAL_MODELS

    if model.lower().removeprefix("openai/") in OFFICIAL_MODELS or Path(model).expanduser().is_dir():
        return model
    from .errors import ModelNotFoundError, UsageError
    from .store import resolve_model

    try:
        return str(resolve_model(model))
    except UsageError as exc:  # not even a repo id: for `plan` that is a model it cannot find
        raise ModelNotFoundError(exc.message, hint=exc.hint) from None


@app.command("plan")
def plan_command(
    model: str = typer.Argument("gpt-oss-20b", help="gpt-oss-20b, gpt-oss-120b, a pulled model, or a local model "
                                                    "directory."),
    vram: str | None = typer.Option(None, "--vram", help="Plan for this much free VRAM, e.g. 12GB (0: no GPU)."),
    ram: str | None = typer.Option(None, "--ram", help="Plan for this much available system RAM, e.g. 32GB."),
    context: int | None = typer.Option(None, "--context", min=1,
                                       help="Context in tokens; kept even if experts must move to RAM."),
    no_quantize: bool = typer.Option(False, "--no-quantize", help="Keep attention and lm_head in bf16, never int8."),
    headroom: str = typer.Option("1GB", "--headroom", help="VRAM to leave free for the desktop and CUDA."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON (the engine's input)."),
) -> None:
    """Show what would run where on this machine, before any download. Sizes are binary (1 GB = 1024 MiB)."""
    from .hardware import HardwareOverride, detect, parse_size
    from .plan import Wishes, plan_for

    wishes = Wishes(context=context, quantize=not no_quantize, headroom_bytes=parse_size(headroom, "--headroom"))
    plan = plan_for(_plan_ref(model), detect(HardwareOverride.from_strings(vram, ram)), wishes)
    if json_out:
        typer.echo(plan.to_json())
    elif plan.fits:
        from rich.console import Console

        from .plan_view import render_plan

        Console(highlight=False).print(render_plan(plan))
    if not plan.fits:
        hint = "would fit: " + "; ".join(plan.suggestions) if plan.suggestions else None
        raise GptossError(plan.refusal_reason or "does not fit", hint=hint)


# ---- the model store: pull / list / show / rm -------------------------------------------------------------
_MODELS_DIR_HELP = "Model store folder (default: the user cache dir, e.g. ~/.cache/gptoss/models)."


def _models_dir_option() -> typer.models.OptionInfo:
    return typer.Option(None, "--models-dir", envvar="GPTOSS_MODELS", help=_MODELS_DIR_HELP, show_default=False)


@app.command("pull")
def pull_command(
    name: str = typer.Argument(..., help="gpt-oss-20b, gpt-oss-120b, a hub repo id (org/name, optionally @revision), "
                                         "or a local model directory to register."),
    models_dir: str | None = _models_dir_option(),
) -> None:
    """Download a model (only the files gptoss runs), after showing its size, free disk and how it would run here.

    An interrupted pull resumes where it stopped; every weight file is checked against the hub's sha256.
    A model already in the Hugging Face cache is used from there.
    Honours HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE.
    """
    from .store_view import run_pull

    run_pull(name, models_dir)


@app.command("list")
def list_command(
    json_out: bool = typer.Option(False, "--json", help="Print the models as JSON."),
    models_dir: str | None = _models_dir_option(),
) -> None:
    """List pulled models: name, size, last used, location."""
    from .store_view import run_list

    run_list(models_dir, json_out)


@app.command("show")
def show_command(
    name: str = typer.Argument(..., help="A model name from `gptoss list`."),
    models_dir: str | None = _models_dir_option(),
) -> None:
    """Show a pulled model: where it came from, its shape, its files, disk use and how it would run here."""
    from .store_view import run_show

    run_show(name, models_dir)


@app.command("rm")
def rm_command(
    name: str = typer.Argument(..., help="A model name from `gptoss list`."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    models_dir: str | None = _models_dir_option(),
) -> None:
    """Delete a pulled model (a registered directory or Hugging Face cache copy is only forgotten)."""
    from .store_view import run_rm

    run_rm(name, models_dir, yes)


# ---- chat and run -----------------------------------------------------------------------------------------
_CHAT_MODEL_HELP = "gpt-oss-20b, gpt-oss-120b, a pulled model's name, or a model directory."


def _effort(value: str) -> str:
    if value not in ("low", "medium", "high"):
        raise typer.BadParameter("use low, medium or high")
    return value


def _chat_options() -> dict[str, typer.models.OptionInfo]:
    """Options `chat` and `run` share (as defaults for their parameters)."""
    return {
        "effort": typer.Option("medium", "--effort", "-r", callback=_effort,
                               help="Reasoning effort: low, medium or high."),
        "system": typer.Option(None, "--system", "-s", help="Developer instructions for the model."),
        "temperature": typer.Option(1.0, "--temperature", "-t", min=0.0, help="Sampling temperature (0: greedy)."),
        "max_tokens": typer.Option(None, "--max-tokens", "-n", min=1,
                                   help="Most tokens per reply, reasoning included (default: until the context is "
                                        "full)."),
        "seed": typer.Option(None, "--seed", help="Random seed, for repeatable sampling."),
        "python": typer.Option(True, "--python/--no-python", help="Let the model run Python (it asks first)."),
        "tools": typer.Option(None, "--tools", help="Your functions as tools: a Python file (or a JSON tool list "
                                                    "for `run --json` callers)."),
        "yes": typer.Option(False, "--yes", "-y", help="Run tool calls without asking."),
        "device": typer.Option("auto", "--device", help="auto, cuda, cuda:N or cpu."),
        "context": typer.Option(None, "--context", "-c", min=1,
                                help="Context in tokens (default: as much as the plan fits)."),
        "plan_json": typer.Option(None, "--plan-json", help="Use this plan (from `gptoss plan --json`)."),
    }


def _O(name: str) -> typer.models.OptionInfo:  # a fresh OptionInfo per use: commands must not share one
    return _chat_options()[name]


@app.command("chat")
def chat_command(
    model: str = typer.Argument("gpt-oss-20b", envvar="GPTOSS_MODEL", help=_CHAT_MODEL_HELP),
    effort: str = _O("effort"), system: str | None = _O("system"), temperature: float = _O("temperature"),
    max_tokens: int | None = _O("max_tokens"), seed: int | None = _O("seed"), python: bool = _O("python"),
    tools: str | None = _O("tools"), yes: bool = _O("yes"), device: str = _O("device"),
    context: int | None = _O("context"), plan_json: str | None = _O("plan_json"),
    models_dir: str | None = _models_dir_option(),
) -> None:
    """Chat with the model: streaming replies, reasoning shown dimmed, tools with approval. /help inside."""
    from .chat.repl import ChatRequest, run_chat
    from .chat.session import Sampling

    sampling = Sampling(temperature=temperature, seed=seed, max_tokens=max_tokens)
    raise typer.Exit(run_chat(ChatRequest(model, device, context, plan_json, models_dir, effort, system, sampling,
                                          python, tools, yes)))


@app.command("run")
def run_command(
    prompt: str | None = typer.Argument(None, help="The prompt; '-' (or nothing, in a pipe) reads stdin."),
    model: str = typer.Option("gpt-oss-20b", "--model", "-m", envvar="GPTOSS_MODEL", help=_CHAT_MODEL_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object: final, reasoning, tool_calls, "
                                                        "usage, timings."),
    show_reasoning: bool = typer.Option(False, "--show-reasoning", help="Stream the reasoning to stderr."),
    print_prompt: bool = typer.Option(False, "--print-prompt", help="Print the harmony prompt (special tokens "
                                                                    "visible) and exit."),
    effort: str = _O("effort"), system: str | None = _O("system"), temperature: float = _O("temperature"),
    max_tokens: int | None = _O("max_tokens"), seed: int | None = _O("seed"), python: bool = _O("python"),
    tools: str | None = _O("tools"), yes: bool = _O("yes"), device: str = _O("device"),
    context: int | None = _O("context"), plan_json: str | None = _O("plan_json"),
    models_dir: str | None = _models_dir_option(),
) -> None:
    """Answer one prompt: only the final answer on stdout, for scripts and pipes.

    Exit codes: 0 complete; 1 failure; 2 usage; 3 model not found; 5 cut short by --max-tokens or the
    context (the partial answer is printed); 130 interrupted.
    """
    from .chat.oneshot import RunRequest, run_oneshot
    from .chat.session import Sampling

    sampling = Sampling(temperature=temperature, seed=seed, max_tokens=max_tokens)
    raise typer.Exit(run_oneshot(RunRequest(prompt, model, effort, system, sampling, json_out, show_reasoning,
                                            print_prompt, python, tools, yes, device, context, plan_json,
                                            models_dir)))


# ---- benchmarks -------------------------------------------------------------------------------------------
@app.command("bench")
def bench_command(
    model: str | None = typer.Argument(None, help="A pulled model or model directory (or use --random)."),
    random: str | None = typer.Option(None, "--random", help="Random weights at the real shape: 20b or 120b. "
                                                             "Needs no download."),
    prompts: str = typer.Option("512,2048", "--prompt", "-p", help="Prefill lengths to time (comma-separated)."),
    depths: str = typer.Option("0", "--depth", "-d", help="Context depths at which to time decode."),
    decode: int = typer.Option(128, "--decode", "-n", min=1, help="Tokens generated per decode run."),
    repeats: int = typer.Option(3, "--repeats", "-r", min=1, help="Runs per test; the median is reported."),
    device: str = typer.Option("auto", "--device", help="auto, cuda, cuda:N or cpu."),
    vram: str | None = typer.Option(None, "--vram", help="Run as the plan for this much free VRAM places the model "
                                                         "(e.g. 8GB: experts that do not fit stay in RAM), with "
                                                         "the process capped at it."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    models_dir: str | None = _models_dir_option(),
) -> None:
    """Measure prefill and decode tokens/s, TTFT, load time and peak memory (as llama-bench does)."""
    from .bench_view import run_bench_command

    run_bench_command(model, random, prompts, depths, decode, repeats, device, json_out, models_dir, vram)


# ---- self-check -------------------------------------------------------------------------------------------
@app.command("doctor")
def doctor_command(
    json_out: bool = typer.Option(False, "--json", help="Print the checks and the facts behind them as JSON."),
    models_dir: str | None = _models_dir_option(),
) -> None:
    """Check that gptoss can run here, and say what to do about anything that is not right.

    Looks at the GPU, the NVIDIA driver, the torch build, Triton (compiling a tiny kernel), the model folder and
    its free disk. Exits 0 when gptoss can run, 1 when not.
    """
    from .doctor_view import run_doctor

    raise typer.Exit(run_doctor(json_out, models_dir))


def _fail(exc: GptossError) -> int:
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    err.print(f"[bold red]error:[/] {exc.message}", markup=True, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {exc.hint}", markup=True, soft_wrap=True)
    return exc.exit_code


def use_expandable_segments() -> None:
    """Let PyTorch's CUDA allocator grow and shrink segments (Linux; the user's own setting wins). A plan sizes VRAM
    to the card; with fixed segments, a small tensor kept inside a large freed block pins the whole block, and a
    later allocation from another pool (a CUDA graph's) can fail with gigabytes free but fragmented."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def main() -> None:
    """Console-script entry point: turns known errors into one clear message and an exit code."""
    debug = os.environ.get("GPTOSS_DEBUG") == "1" or "--debug" in sys.argv[1:]
    use_expandable_segments()
    if len(sys.argv) == 1:  # plain `gptoss`: the help, and success (not click's usage-error exit)
        sys.argv.append("--help")
    try:
        rc = app(standalone_mode=False)
    except GptossError as exc:
        if debug:
            raise
        sys.exit(_fail(exc))
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(ExitCode.INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:  # click's usage errors carry their own exit code
        # Duck-typed: newer typer raises its vendored click's exceptions (typer._click), not click's.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n(run with --debug for the traceback)\n")
        sys.exit(ExitCode.FAILURE)
    sys.exit(rc if isinstance(rc, int) else ExitCode.OK)
