"""The installer's decisions, in one place: which PyTorch build fits this NVIDIA driver and GPU, and which
``triton-windows`` pairs with that torch. ``install.ps1`` and ``install.sh`` ask this module (``python -m
gptoss_cli.install_logic choose``) right after installing gptoss without its dependencies, and ``gptoss doctor``
uses the same tables for its advice, so there is one source of truth.

Standard library only: it runs in the fresh venv before torch or anything else is there.

Where the numbers come from (re-check them when ``TORCH_SERIES`` moves):

- CUDA builds of a torch release and the GPU architectures each carries: PyTorch's RELEASE.md, "Release
  Compatibility Matrix" and "PyTorch CUDA Support Matrix" (2.12, 2.13 and 2.14 ship CUDA 12.6 as legacy and 13.0
  as stable; 13.2 is experimental in 2.13 and never chosen here).
- Driver needed per CUDA version: NVIDIA's CUDA Toolkit release notes (the driver each toolkit ships with) and
  "CUDA Minor Version Compatibility" (12.x runs on drivers >= 525, 13.x on >= 580, with a limited feature set
  below the toolkit's own driver).
- torch -> Triton pairing: the ``triton`` pin in each torch release (``.ci/docker/triton_version.txt``), which is
  also the table in the triton-windows README.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata

TORCH_SERIES = "2.13"  # the torch minor the installers install; CI tests the same (pip install torch==2.13.0)
TORCH_REQUIREMENT = f"torch=={TORCH_SERIES}.*"
PYTORCH_INDEX = "https://download.pytorch.org/whl"
CPU = "cpu"
MIN_CAPABILITY = (8, 0)  # as plan.MIN_CAPABILITY: gptoss runs on Ampere (RTX 30) or newer, else on the CPU

# torch minor -> Triton minor it was released with (PyTorch's triton pin; the triton-windows README table).
TRITON_FOR_TORCH: dict[str, str] = {
    "2.4": "3.1", "2.5": "3.1", "2.6": "3.2", "2.7": "3.3", "2.8": "3.4", "2.9": "3.5",
    "2.10": "3.6", "2.11": "3.6", "2.12": "3.7", "2.13": "3.7", "2.14": "3.8",
}

Version = tuple[int, ...]
Capability = tuple[int, int]


@dataclass(frozen=True)
class CudaBuild:
    """One CUDA build of ``TORCH_SERIES`` on PyTorch's index."""

    tag: str                         # the index folder and local version label: cu130
    cuda: str                        # 13.0
    full_driver: dict[str, Version]  # per OS: the driver the toolkit ships with (everything works from here)
    archs: tuple[Capability, ...]    # compute capabilities the wheel carries kernels for (Linux x86_64, Windows)

    @property
    def index_url(self) -> str:
        return f"{PYTORCH_INDEX}/{self.tag}"

    def floor_driver(self, osk: str) -> Version:
        return driver_floor(self.cuda, osk)

    def covers(self, capability: Capability | None) -> bool:
        """Whether the wheel has kernels for this GPU: a kernel built for sm_XY runs on sm_XZ with Z >= Y."""
        if capability is None:  # nvidia-smi too old to say: let torch find out at run time
            return True
        return any(major == capability[0] and minor <= capability[1] for major, minor in self.archs)


# The oldest driver a CUDA major runs on, through minor version compatibility (NVIDIA's table, per OS).
DRIVER_FLOOR: dict[str, dict[int, Version]] = {
    "linux": {11: (450, 80, 2), 12: (525, 60, 13), 13: (580,)},
    "windows": {11: (452, 39), 12: (527, 41), 13: (580,)},
}
_PRE_TURING = ((5, 0), (6, 0), (7, 0))
_TURING_TO_BLACKWELL = ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0))
# Newest first: the installer takes the first build the driver fully supports.
CUDA_BUILDS: tuple[CudaBuild, ...] = (
    CudaBuild("cu130", "13.0", full_driver={"linux": (580, 65, 6), "windows": (580,)}, archs=_TURING_TO_BLACKWELL),
    CudaBuild("cu126", "12.6", full_driver={"linux": (560, 35, 5), "windows": (561, 17)},
              archs=_PRE_TURING + ((7, 5), (8, 0), (8, 6), (9, 0))),
)


@dataclass(frozen=True)
class SmiGpu:
    """One line of ``nvidia-smi --query-gpu=driver_version,name,memory.total,compute_cap``."""

    driver: str
    name: str
    memory_mib: int | None
    capability: Capability | None

    @property
    def driver_version(self) -> Version:
        return parse_version(self.driver)


@dataclass(frozen=True)
class TorchChoice:
    """What to install, and the sentences that explain why (printed by the installer)."""

    build: str                       # cu130, cu126 or cpu
    index_url: str
    torch_requirement: str
    triton_requirement: str | None   # Windows + CUDA only; on Linux the torch wheel brings its own triton
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_version(text: str) -> Version:
    """``572.16`` -> (572, 16); ``580.95.05`` -> (580, 95, 5). Unreadable parts end the tuple."""
    parts: list[int] = []
    for piece in text.strip().split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def show_version(version: Version) -> str:
    return ".".join(f"{n:02d}" if i == 2 else str(n) for i, n in enumerate(version))


def parse_nvidia_smi(text: str) -> list[SmiGpu]:
    """GPUs from nvidia-smi's CSV (``noheader``, with or without ``nounits``; compute_cap optional). Lines that
    are not GPU rows (nvidia-smi's own error messages) are skipped."""
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 3 or not parse_version(cells[0]):
            continue
        memory = cells[2].removesuffix("MiB").strip()
        capability = parse_version(cells[3]) if len(cells) > 3 else ()
        gpus.append(SmiGpu(driver=cells[0], name=cells[1], memory_mib=int(memory) if memory.isdigit() else None,
                           capability=(capability[0], capability[1]) if len(capability) == 2 else None))
    return gpus


def os_key(system: str) -> str:
    """``platform.system()`` (or the installer's word) -> the key of the driver tables."""
    return "windows" if system.lower().startswith("win") else "linux"


def triton_windows_requirement(torch_version: str = TORCH_SERIES) -> str:
    """The triton-windows range that pairs with a torch version: ``2.13.0+cu130`` -> ``triton-windows>=3.7,<3.8``."""
    series = ".".join(torch_version.split("+")[0].split(".")[:2])
    if series not in TRITON_FOR_TORCH:
        raise ValueError(f"no known Triton pairing for torch {torch_version}")
    major, minor = TRITON_FOR_TORCH[series].split(".")
    return f"triton-windows>={major}.{minor},<{major}.{int(minor) + 1}"


def driver_floor(cuda: str, system: str) -> Version:
    """The oldest driver that runs a CUDA ``major.minor`` build at all (NVIDIA's minor version compatibility);
    a CUDA major newer than the table needs at least what the newest one does."""
    floors = DRIVER_FLOOR[os_key(system)]
    major = int(cuda.split(".")[0])
    return floors.get(major, floors[max(floors)])


def newest_full_driver(system: str) -> Version:
    """The driver that gets the newest CUDA build of ``TORCH_SERIES``: what to tell people to update to."""
    return CUDA_BUILDS[0].full_driver[os_key(system)]


def _cpu(reason: str, warning: str | None = None) -> TorchChoice:
    return TorchChoice(CPU, f"{PYTORCH_INDEX}/{CPU}", TORCH_REQUIREMENT, None, [reason], [warning] if warning else [])


_SLOW = "gptoss will run on the CPU, which is slow (a few tokens/s for gpt-oss-20b)."


def choose_torch(system: str, gpus: list[SmiGpu], force_cpu: bool = False) -> TorchChoice:
    """The torch build for this machine: the newest CUDA build whose own driver is installed and that has
    kernels for the GPU; else one that runs through minor version compatibility (with a warning); else CPU."""
    osk = os_key(system)
    if force_cpu:
        return _cpu("CPU build: asked for with -Cpu/--cpu.")
    if not gpus:
        return _cpu("CPU build: no NVIDIA GPU found (nvidia-smi is missing or lists none).",
                    f"{_SLOW} If this PC has an NVIDIA GPU, install its driver and run the installer again.")
    gpu = max(gpus, key=lambda g: g.memory_mib or 0)  # the one gptoss will use
    cap = "compute capability " + (".".join(map(str, gpu.capability)) if gpu.capability else "unknown")
    seen = f"{gpu.name} ({cap}), driver {gpu.driver}"
    if gpu.capability is not None and gpu.capability < MIN_CAPABILITY:
        return _cpu(f"CPU build: {seen}: gptoss needs compute capability 8.0 or newer (RTX 30 series and later) "
                    "for bf16 and its Triton kernels, so this GPU would not be used.", _SLOW)
    fitting = [b for b in CUDA_BUILDS if b.covers(gpu.capability)]
    if not fitting:
        return _cpu(f"CPU build: {seen}: no PyTorch {TORCH_SERIES} build has kernels for this GPU.", _SLOW)
    no_kernels = "".join(f" The CUDA {b.cuda} build has no kernels for this GPU."
                         for b in CUDA_BUILDS if b not in fitting)
    triton = triton_windows_requirement() if osk == "windows" else None
    driver, best = gpu.driver_version, fitting[0].full_driver[osk]
    for i, build in enumerate(fitting):
        if driver >= build.full_driver[osk]:
            newer = "".join(f" (CUDA {b.cuda} would need driver >= {show_version(b.full_driver[osk])})"
                            for b in fitting[:i])
            return TorchChoice(build.tag, build.index_url, TORCH_REQUIREMENT, triton,
                               [f"{seen}.", f"CUDA {build.cuda} build ({build.tag}): the newest PyTorch {TORCH_SERIES} "
                                f"build this driver fully supports (needs >= {show_version(build.full_driver[osk])})"
                                f"{newer}.{no_kernels}"])
    for build in fitting:
        if driver >= build.floor_driver(osk):
            return TorchChoice(build.tag, build.index_url, TORCH_REQUIREMENT, triton,
                               [f"{seen}.", f"CUDA {build.cuda} build ({build.tag}): runs on this driver through CUDA "
                                f"minor version compatibility.{no_kernels}"],
                               [f"Driver {gpu.driver} is older than CUDA {build.cuda} expects "
                                f"({show_version(build.full_driver[osk])}); some kernels may fail. Update the NVIDIA "
                                f"driver to >= {show_version(best)} and run the installer again."])
    oldest = min(b.floor_driver(osk) for b in fitting)
    return _cpu(f"CPU build: {seen}: the driver is too old for any CUDA build of PyTorch {TORCH_SERIES} "
                f"(the oldest runs on >= {show_version(oldest)}).",
                f"Update the NVIDIA driver to >= {show_version(best)} (nvidia.com/drivers or the NVIDIA app), then "
                "run the installer again to get the GPU build. Until then gptoss runs on the CPU, slowly.")


def build_of(torch_version: str) -> str | None:
    """The build label of an installed torch (``2.13.0+cu130`` -> ``cu130``), or None for an unlabelled wheel."""
    return torch_version.split("+", 1)[1] if "+" in torch_version else None


def installed_torch() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def must_replace_torch(installed: str | None, choice: TorchChoice) -> bool:
    """A torch already in the venv that pip would keep although it is the wrong build or series (pip treats
    ``2.13.0+cpu`` as satisfying ``torch==2.13.*``), so the installer uninstalls it first."""
    if installed is None:
        return False
    series = ".".join(installed.split("+")[0].split(".")[:2])
    return series != TORCH_SERIES or build_of(installed) != choice.build


def decode_text(raw: bytes) -> str:
    """Text a shell wrote: Windows PowerShell 5.1 may write UTF-16 with a byte order mark."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    return raw.decode("utf-8-sig", errors="replace")


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptoss_cli.install_logic",
                                     description="Print the installer's torch choice for this machine as JSON.")
    sub = parser.add_subparsers(dest="command", required=True)
    choose = sub.add_parser("choose", help="choose the torch build from nvidia-smi's CSV")
    choose.add_argument("--os", required=True, choices=["windows", "linux"])
    choose.add_argument("--smi-file", help="nvidia-smi CSV output ('-' for stdin); omit when there is no nvidia-smi")
    choose.add_argument("--cpu", action="store_true", help="force the CPU build")
    args = parser.parse_args(argv)
    text = ""
    if args.smi_file == "-":
        text = sys.stdin.read()
    elif args.smi_file:
        with open(args.smi_file, "rb") as f:
            text = decode_text(f.read())
    choice = choose_torch(args.os, parse_nvidia_smi(text), force_cpu=args.cpu)
    out = asdict(choice) | {"replace_installed_torch": must_replace_torch(installed_torch(), choice)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
