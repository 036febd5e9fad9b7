"""``gptoss doctor``: can this machine run gpt-oss, and if not, what exactly to do.

Facts are gathered once (:func:`gather`: nvidia-smi, torch, Triton, a tiny Triton kernel, the model folder) and
judged by a pure function (:func:`judge`), so tests can describe any machine without having it. The advice
uses the installer's own tables (:mod:`install_logic`), so the doctor and the installer never disagree.

:func:`triton_status` is the cheap part of the Triton check, for the engine: it says whether the fast path can
be used and, when not, why, so a broken Triton costs speed, never function.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from . import install_logic as il
from .hardware import GiB, Gpu, cpu_cores, detect_gpus

Status = Literal["ok", "warn", "fail", "skip"]
SMI_FIELDS = "driver_version,name,memory.total,compute_cap"
_NVSMI_WINDOWS = Path(os.environ.get("ProgramFiles", r"C:\Program Files")) / "NVIDIA Corporation/NVSMI/nvidia-smi.exe"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    advice: str | None = None
    command: str | None = None  # one line to run that fixes it


@dataclass(frozen=True)
class KernelRun:
    ok: bool
    seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Facts:
    system: str                           # platform.system()
    python: str
    python_exe: str
    smi: tuple[il.SmiGpu, ...] | None     # None: nvidia-smi is not installed (or does not answer)
    torch: str | None                     # torch.__version__; None when torch does not import
    torch_error: str | None
    torch_cuda: str | None                # torch.version.cuda; None on a CPU build
    cuda_error: str | None                # why a CUDA build of torch sees no GPU
    gpus: tuple[Gpu, ...]                 # what torch can use (hardware.detect_gpus)
    arch_list: tuple[str, ...]            # torch.cuda.get_arch_list(): the GPU code this torch carries
    triton: str | None                    # "triton-windows 3.7.1"; None when Triton does not import
    triton_error: str | None
    official_triton_on_windows: bool      # OpenAI's triton wheel on Windows: it cannot work there
    kernel: KernelRun | None              # None: not attempted
    models_dir: str
    models_writable: bool                 # the folder, or the nearest one above it that exists
    free_bytes: int | None
    pulled: tuple[str, ...]
    numba: str | None = None              # numba.__version__; None when it does not import
    numba_error: str | None = None
    avx512: bool = False                  # the CPU's expert kernel decodes 16 lanes at a time with AVX-512
    cores: int = 1                        # CPUs this process may use


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]
    next_command: str

    @property
    def usable(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self, facts: Facts | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"usable": self.usable, "next_command": self.next_command,
                               "checks": [asdict(c) for c in self.checks]}
        if facts is not None:
            out["facts"] = asdict(facts)
        return out


# ---- the engine's question --------------------------------------------------------------------------------
def _import_triton() -> tuple[str | None, str | None]:
    """("triton-windows 3.7.1", None) or (None, why it does not import)."""
    try:
        import triton
    except Exception as exc:  # a broken install fails in many ways: ImportError, OSError (DLLs), RuntimeError
        return None, f"{type(exc).__name__}: {exc}"
    for dist in ("triton-windows", "triton"):
        try:
            return f"{dist} {metadata.version(dist)}", None
        except metadata.PackageNotFoundError:
            continue
    return f"triton {getattr(triton, '__version__', '?')}", None


def triton_install_command(torch_version: str | None, system: str | None = None,
                           python: str | None = None) -> str:
    """The pip line that installs the Triton paired with this torch (triton-windows on Windows)."""
    system = system or platform.system()
    py = _python(python or sys.executable, system)
    series = ".".join((torch_version or il.TORCH_SERIES).split("+")[0].split(".")[:2])
    if il.os_key(system) == "windows":
        try:
            return f'{py} -m pip install "{il.triton_windows_requirement(series)}"'
        except ValueError:
            return f"{py} -m pip install triton-windows"
    paired = il.TRITON_FOR_TORCH.get(series)
    return f'{py} -m pip install "triton=={paired}.*"' if paired else f"{py} -m pip install triton"


def triton_status() -> tuple[bool, str]:
    """Whether the engine's Triton kernels can run here, and a sentence saying so or why not, with the fix. The
    decision is the fast path's own (``model.fast.triton_available``); this adds what to do about it. Cheap:
    imports triton and asks torch about the GPU, compiles nothing."""
    import torch

    from .model.fast import triton_available

    version, _ = _import_triton()
    ok, reason = triton_available()
    if version is not None and platform.system() == "Windows" and not version.startswith("triton-windows"):
        return False, (f"{version} is OpenAI's triton, which does not run on Windows; using the slower torch path. "
                       f"Replace it: pip uninstall triton, then {triton_install_command(torch.__version__)}")
    if ok:
        return True, version or "Triton"
    if version is None:
        install = triton_install_command(torch.__version__)
        return False, f"{reason}; using the slower torch path. To install it: {install}"
    return False, f"{reason}; using the torch path"


# ---- gathering --------------------------------------------------------------------------------------------
def query_nvidia_smi() -> tuple[il.SmiGpu, ...] | None:
    """GPUs and driver from nvidia-smi, or None when it is not installed or fails (no driver loaded)."""
    exe = shutil.which("nvidia-smi")
    if exe is None and platform.system() == "Windows" and _NVSMI_WINDOWS.is_file():
        exe = str(_NVSMI_WINDOWS)
    if exe is None:
        return None
    for fields in (SMI_FIELDS, SMI_FIELDS.removesuffix(",compute_cap")):  # drivers before ~510 lack compute_cap
        try:
            done = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode == 0:
            return tuple(il.parse_nvidia_smi(done.stdout))
    return None


def _torch_facts() -> dict[str, Any]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - report any import failure, it is the finding
        return {"torch": None, "torch_error": f"{type(exc).__name__}: {exc}", "torch_cuda": None,
                "cuda_error": None, "arch_list": ()}
    cuda_error = None
    if torch.version.cuda and not torch.cuda.is_available():
        try:
            torch.cuda.init()
        except Exception as exc:  # noqa: BLE001 - torch's message names the cause (no driver, too old)
            cuda_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        arch_list = tuple(torch.cuda.get_arch_list()) if torch.cuda.is_available() else ()
    except Exception:  # noqa: BLE001
        arch_list = ()
    return {"torch": torch.__version__, "torch_error": None, "torch_cuda": torch.version.cuda,
            "cuda_error": cuda_error, "arch_list": arch_list}


def _run_kernel(gpus: tuple[Gpu, ...], triton_ok: bool) -> KernelRun | None:
    usable = [g for g in gpus if g.capability is None or g.capability >= il.MIN_CAPABILITY]
    if not (usable and triton_ok):
        return None
    gpu = max(usable, key=lambda g: g.free_bytes)
    try:
        from . import triton_probe

        return KernelRun(True, seconds=triton_probe.run(f"cuda:{gpu.index}"))
    except Exception as exc:  # noqa: BLE001 - compiler, driver and DLL errors all mean "torch path"
        message = str(exc).strip().splitlines()
        return KernelRun(False, error=f"{type(exc).__name__}: {message[0] if message else ''}"[:500])


def _nearest_existing(path: Path) -> Path | None:
    return next((p for p in (path, *path.parents) if p.exists()), None)


def free_bytes_at(path: Path) -> int | None:
    """Free space on the disk that holds ``path`` (or would: the nearest folder that exists)."""
    existing = _nearest_existing(path)
    try:
        return shutil.disk_usage(existing).free if existing else None
    except OSError:
        return None


def writable(path: Path) -> bool:
    """Whether gptoss can create files there (in the folder, or create it under the nearest one that exists)."""
    existing = _nearest_existing(path)
    return existing is not None and os.access(existing, os.W_OK | os.X_OK)


def _pulled(models_dir: Path) -> tuple[str, ...]:
    try:
        from . import store

        return tuple(m.name for m in store.list_models(models_dir))
    except Exception:  # noqa: BLE001 - a damaged store must not break the doctor
        return ()


def _numba_facts() -> dict[str, Any]:
    """numba's version (or why it does not import) and whether the CPU has AVX-512, for the CPU expert share."""
    try:
        import numba
        from llvmlite import binding
    except Exception as exc:  # noqa: BLE001 - a broken numba/llvmlite install fails in many ways
        return {"numba": None, "numba_error": f"{type(exc).__name__}: {exc}"}
    return {"numba": numba.__version__, "numba_error": None,
            "avx512": bool(binding.get_host_cpu_features().get("avx512f"))}


def gather(models_dir: str | Path | None = None) -> Facts:
    from . import settings

    folder = settings.models_dir(models_dir)
    torch_facts = _torch_facts()
    gpus = detect_gpus() if torch_facts["torch"] else ()
    triton, triton_error = _import_triton()
    system = platform.system()
    official_on_windows = system == "Windows" and triton is not None and not triton.startswith("triton-windows")
    return Facts(system=system, python=platform.python_version(), python_exe=sys.executable,
                 smi=query_nvidia_smi(), gpus=gpus, triton=triton, triton_error=triton_error,
                 official_triton_on_windows=official_on_windows,
                 kernel=_run_kernel(gpus, triton is not None and not official_on_windows),
                 models_dir=str(folder), models_writable=writable(folder), free_bytes=free_bytes_at(folder),
                 pulled=_pulled(folder), cores=cpu_cores(), **torch_facts, **_numba_facts())


# ---- judging ----------------------------------------------------------------------------------------------
def model_bytes(name: str) -> int:
    """Disk a pull of an official model needs: its weights, computed from the built-in config."""
    from .model.config import official_config
    from .sizes import tensor_sizes

    return sum(tensor_sizes(official_config(name)).values())


def _gb(n: int) -> str:
    return f"{n / GiB:.1f} GB"


def _python(python: str, system: str) -> str:
    """The interpreter as the first word of a command line: PowerShell on Windows (a quoted path needs the call
    operator), a POSIX shell elsewhere."""
    if il.os_key(system) == "windows":
        return f'& "{python}"' if " " in python else python
    return shlex.quote(python)


def _capability(cap: tuple[int, ...] | None) -> str:
    return "compute capability " + (".".join(map(str, cap)) if cap else "unknown")


def _arch_covers(arch_list: tuple[str, ...], cap: tuple[int, int] | None) -> bool:
    """Whether torch's compiled GPU code runs on ``cap``: sm_XY runs on X.Z for Z >= Y; compute_XY (PTX) runs
    on anything at least X.Y. An empty list (unknown) counts as covered."""
    if cap is None or not arch_list:
        return True
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        digits = digits.rstrip("af")  # sm_90a, sm_100f: family-specific variants of the same major
        if not digits.isdigit() or len(digits) < 2:
            continue
        major, minor = int(digits[:-1]), int(digits[-1])
        if (kind == "sm" and major == cap[0] and minor <= cap[1]) or (kind == "compute" and (major, minor) <= cap):
            return True
    return False


def _install_torch(facts: Facts, index_url: str) -> str:
    return f'{_python(facts.python_exe, facts.system)} -m pip install "{il.TORCH_REQUIREMENT}" --index-url {index_url}'


def _reinstall_torch(facts: Facts, index_url: str) -> str:
    """One line for PowerShell and POSIX shells alike (``;`` separates commands in both): pip would keep a
    ``2.13.0+cpu`` as satisfying ``torch==2.13.*``, so the wrong build goes first."""
    return f"{_python(facts.python_exe, facts.system)} -m pip uninstall -y torch; {_install_torch(facts, index_url)}"


def _rerun_installer(facts: Facts) -> str:
    return "run install.ps1 again (it picks the torch build for your driver), or " if facts.system == "Windows" else ""


def judge(facts: Facts) -> Report:
    """The checks, in the order a person reads them, each with advice where something is wrong."""
    smi = list(facts.smi or ())
    choice = il.choose_torch(facts.system, smi)
    primary_smi = max(smi, key=lambda g: g.memory_mib or 0) if smi else None
    capable = [g for g in facts.gpus if g.capability is None or g.capability >= il.MIN_CAPABILITY]
    checks = [Check("python", "ok", f"{facts.python} ({facts.python_exe})"),
              _gpu_check(facts, primary_smi),
              _driver_check(facts, primary_smi),
              _torch_check(facts, primary_smi, choice),
              _triton_check(facts, capable),
              _kernel_check(facts, capable),
              _cpu_experts_check(facts, capable),
              *_disk_checks(facts)]
    failing = [c for c in checks if c.status == "fail"]
    if failing:
        next_command = failing[0].command or "gptoss doctor  (after fixing what failed above)"
    else:
        next_command = "gptoss chat" if facts.pulled else "gptoss pull gpt-oss-20b"
    return Report(tuple(checks), next_command)


def _gpu_check(facts: Facts, smi_gpu: il.SmiGpu | None) -> Check:
    if facts.gpus:
        gpu = max(facts.gpus, key=lambda g: g.total_bytes)
        detail = f"{gpu.name}, {_gb(gpu.total_bytes)} VRAM ({_gb(gpu.free_bytes)} free), {_capability(gpu.capability)}"
        if len(facts.gpus) > 1:
            detail += f" (+{len(facts.gpus) - 1} more)"
        if gpu.capability is not None and gpu.capability < il.MIN_CAPABILITY:
            return Check("gpu", "warn", detail, "gptoss needs compute capability 8.0 or newer (RTX 30 series and "
                                                "later); on this GPU it runs on the CPU, which is slow.")
        return Check("gpu", "ok", detail)
    if smi_gpu is not None:
        memory = f", {smi_gpu.memory_mib / 1024:.1f} GB VRAM" if smi_gpu.memory_mib else ""
        return Check("gpu", "ok", f"{smi_gpu.name}{memory}, {_capability(smi_gpu.capability)} "
                                  "(seen by nvidia-smi; see torch below)")
    return Check("gpu", "warn", "no NVIDIA GPU found",
                 "gptoss runs on the CPU, which is slow (a few tokens/s for gpt-oss-20b). With an NVIDIA GPU, "
                 "install its driver (nvidia.com/drivers) and run gptoss doctor again.")


def _driver_check(facts: Facts, smi_gpu: il.SmiGpu | None) -> Check:
    if smi_gpu is None:
        if facts.gpus:
            return Check("driver", "skip", "nvidia-smi not found, so the driver version is unknown "
                                           "(torch sees the GPU)")
        return Check("driver", "skip", "no NVIDIA driver found")
    newest = il.show_version(il.newest_full_driver(facts.system))
    detail = f"{smi_gpu.driver}"
    if facts.torch_cuda:
        floor = il.driver_floor(facts.torch_cuda, facts.system)
        if smi_gpu.driver_version < floor:
            fallback = il.choose_torch(facts.system, [smi_gpu])
            switch = _reinstall_torch(facts, fallback.index_url)
            return Check("driver", "fail", f"{detail}: too old for this torch (CUDA {facts.torch_cuda} needs "
                                           f">= {il.show_version(floor)})",
                         f"Update the NVIDIA driver to >= {newest} (nvidia.com/drivers or the NVIDIA app), or install "
                         f"the torch build this driver runs ({fallback.build}): {_rerun_installer(facts)}{switch}",
                         command=switch)
    fitting = [b for b in il.CUDA_BUILDS if b.covers(smi_gpu.capability)]
    capable = smi_gpu.capability is None or smi_gpu.capability >= il.MIN_CAPABILITY
    if facts.torch_cuda is None and capable and fitting and \
            smi_gpu.driver_version < min(b.floor_driver(facts.system) for b in fitting):
        return Check("driver", "warn", f"{detail}: too old for any CUDA build of PyTorch {il.TORCH_SERIES}, "
                                       "so gptoss runs on the CPU",
                     f"Update the NVIDIA driver to >= {newest} (nvidia.com/drivers or the NVIDIA app), then "
                     f"{_rerun_installer(facts)}{_reinstall_torch(facts, fitting[0].index_url)}")
    if smi_gpu.driver_version < il.newest_full_driver(facts.system):
        return Check("driver", "ok", f"{detail} (>= {newest} would allow the CUDA {il.CUDA_BUILDS[0].cuda} build)")
    return Check("driver", "ok", detail)


def _torch_check(facts: Facts, smi_gpu: il.SmiGpu | None, choice: il.TorchChoice) -> Check:
    install = _reinstall_torch(facts, choice.index_url)
    if facts.torch is None:
        fresh = _install_torch(facts, choice.index_url)
        return Check("torch", "fail", f"torch does not import ({facts.torch_error})",
                     f"Install it: {_rerun_installer(facts)}{fresh}", command=fresh)
    if facts.torch_cuda is None:
        if choice.build != il.CPU and smi_gpu is not None:
            return Check("torch", "fail", f"{facts.torch} is a CPU build, but this PC has {smi_gpu.name}",
                         f"Install the CUDA {choice.build} build: {_rerun_installer(facts)}{install}", command=install)
        return Check("torch", "ok", f"{facts.torch} (CPU build)")
    build = f"{facts.torch} (CUDA {facts.torch_cuda} build)"
    if not facts.gpus:
        if smi_gpu is None:
            return Check("torch", "warn", f"{build}, but there is no NVIDIA GPU: it runs on the CPU")
        return Check("torch", "fail", f"{build} cannot use the GPU: {facts.cuda_error or 'CUDA is not available'}",
                     "Update the NVIDIA driver (see the driver line), reboot, and run gptoss doctor again.")
    gpu = max(facts.gpus, key=lambda g: g.total_bytes)
    if not _arch_covers(facts.arch_list, gpu.capability):
        return Check("torch", "fail", f"{build} has no kernels for {gpu.name} ({_capability(gpu.capability)})",
                     f"Install the build for this GPU: {_rerun_installer(facts)}{install}", command=install)
    return Check("torch", "ok", f"{build}, sees {gpu.name}")


def _triton_check(facts: Facts, capable: list[Gpu]) -> Check:
    install = triton_install_command(facts.torch, facts.system, facts.python_exe)
    if not capable:
        found = facts.triton or "Triton does not import"
        return Check("triton", "skip", f"{found}; not used without a GPU gptoss can run on")
    if facts.official_triton_on_windows:
        return Check("triton", "warn", f"{facts.triton}: OpenAI's triton does not run on Windows",
                     "gptoss uses the slower torch path. Replace it: "
                     f"{_python(facts.python_exe, facts.system)} -m pip uninstall -y triton; {install}")
    if facts.triton is None:
        return Check("triton", "warn", f"Triton does not import ({facts.triton_error})",
                     f"gptoss works without it on the slower torch path. To install it: {install}")
    series = ".".join((facts.torch or "").split("+")[0].split(".")[:2])
    paired = il.TRITON_FOR_TORCH.get(series)
    version = facts.triton.split()[-1]
    if paired and not version.startswith(paired + "."):
        return Check("triton", "warn", f"{facts.triton}, but torch {facts.torch} was released with Triton {paired}",
                     f"A mismatched Triton can fail to compile; if the kernel check fails: {install}")
    return Check("triton", "ok", facts.triton)


def _kernel_check(facts: Facts, capable: list[Gpu]) -> Check:
    if facts.kernel is None:
        why = "no GPU gptoss can use" if not capable else "Triton is not usable"
        return Check("kernel", "skip", f"Triton kernel not tried: {why}")
    if facts.kernel.ok:
        return Check("kernel", "ok", f"a Triton kernel compiled and ran on the GPU in {facts.kernel.seconds:.1f} s")
    hint = ("Update the NVIDIA driver; if the error names a DLL, install the Microsoft Visual C++ Redistributable "
            "(x64). " if facts.system == "Windows" else "Update the NVIDIA driver. ")
    return Check("kernel", "warn", f"the Triton kernel failed: {facts.kernel.error}",
                 f"gptoss falls back to the slower torch path. {hint}Reinstalling the paired Triton may help: "
                 f"{triton_install_command(facts.torch, facts.system, facts.python_exe)}")


def _cpu_experts_check(facts: Facts, capable: list[Gpu]) -> Check:
    """When a model does not fit VRAM, the CPU computes part of each expert kept in RAM (engine/cpu_share.py)."""
    if not capable:
        return Check("offload", "skip", "no GPU gptoss can run on: the CPU runs everything")
    if facts.numba is None:
        return Check("offload", "warn", f"numba does not import ({facts.numba_error})",
                     "experts kept in RAM are then read by the GPU alone: a model that does not fit VRAM decodes "
                     "slower (1.5x on the test machine)", f'"{facts.python_exe}" -m pip install "numba>=0.60"')
    team = max(1, facts.cores - 2)
    decode = "AVX-512: the 16-lane table decode" if facts.avx512 else "no AVX-512: the slower fp16 decode"
    return Check("offload", "ok", f"numba {facts.numba}; {team} of {facts.cores} cores compute part of each "
                                      f"expert kept in RAM ({decode})")


def _disk_checks(facts: Facts) -> list[Check]:
    pulled = f"; pulled: {', '.join(facts.pulled)}" if facts.pulled else "; no model pulled yet"
    cache = Check("models", "ok", f"{facts.models_dir}{pulled}")
    if not facts.models_writable:
        cache = Check("models", "fail", f"{facts.models_dir} cannot be written",
                      "Choose a folder you can write: set GPTOSS_MODELS to it (or pass --models-dir).")
    if facts.free_bytes is None:
        return [cache, Check("disk", "skip", "free space unknown (the folder's disk cannot be read)")]
    small, large = model_bytes("gpt-oss-20b"), model_bytes("gpt-oss-120b")
    needs = f"gpt-oss-20b needs {_gb(small)}, gpt-oss-120b {_gb(large)}"
    free = f"{_gb(facts.free_bytes)} free ({needs})"
    if facts.free_bytes < small and not facts.pulled:
        return [cache, Check("disk", "warn", free,
                             "Free up space, or keep models on another disk: set GPTOSS_MODELS to a folder there "
                             "(or pass --models-dir).")]
    return [cache, Check("disk", "ok", free)]
