"""What this machine has for running a model: NVIDIA GPUs (through torch), system RAM, CPU cores and
the OS, plus what-if overrides (``--vram 12GB --ram 32GB``) for planning on hardware you don't have.

Detection never fails: a machine where CUDA is unusable is a machine with no GPU. Memory sizes
follow the JEDEC convention that GPU vendors and Windows use: 1 GB = 1024 MiB = 2**30 bytes, so a
"16 GB" card is ``--vram 16GB``."""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import UsageError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_UNITS = {"": None, "B": 1, "K": KiB, "KB": KiB, "KIB": KiB, "M": MiB, "MB": MiB, "MIB": MiB,
          "G": GiB, "GB": GiB, "GIB": GiB, "T": TiB, "TB": TiB, "TIB": TiB}
WHAT_IF_GPU = "what-if GPU"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int] | None  # None for a what-if GPU of unknown generation
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[Gpu, ...]
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_cores: int
    os: str


@dataclass(frozen=True)
class HardwareOverride:
    """What-if values that replace detected ones; ``vram_bytes=0`` means "no GPU"."""

    vram_bytes: int | None = None
    ram_bytes: int | None = None

    @classmethod
    def from_strings(cls, vram: str | None = None, ram: str | None = None) -> HardwareOverride:
        return cls(vram_bytes=None if vram is None else parse_size(vram, "--vram"),
                   ram_bytes=None if ram is None else parse_size(ram, "--ram"))

    def apply(self, hw: Hardware) -> Hardware:
        """The hardware with overridden sizes. A VRAM override caps the detected GPU (keeping its
        name, so the bandwidth estimate still fits the card) or stands in for a missing one."""
        if self.vram_bytes is not None:
            if self.vram_bytes == 0:
                hw = replace(hw, gpus=())
            else:
                gpu = max(hw.gpus, key=lambda g: g.free_bytes, default=Gpu(0, WHAT_IF_GPU, None, 0, 0))
                hw = replace(hw, gpus=(replace(gpu, total_bytes=self.vram_bytes, free_bytes=self.vram_bytes),))
        if self.ram_bytes is not None:
            hw = replace(hw, ram_total_bytes=self.ram_bytes, ram_available_bytes=self.ram_bytes)
        return hw


def parse_size(text: str, what: str = "size") -> int:
    """``12GB``, ``12 GiB``, ``12000MB``, ``1.5T`` -> bytes (binary units, see the module doc); a bare
    ``0`` is allowed (``--vram 0``: plan for a machine without a GPU)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", text)
    unit = _UNITS.get(m.group(2).upper(), 0) if m else 0
    if not m or unit == 0:
        raise UsageError(f"{what}: cannot read {text!r} as a size",
                         hint="write a number and a unit, e.g. 12GB or 12000MB")
    if unit is None and float(m.group(1)) == 0:
        return 0
    if unit is None:
        raise UsageError(f"{what}: {text!r} has no unit", hint=f"write e.g. {m.group(1)}GB")
    return int(float(m.group(1)) * unit)


def detect(override: HardwareOverride | None = None) -> Hardware:
    """This machine, with ``override`` applied. Skips GPU probing (and importing torch) only when
    the override says there is no GPU."""
    override = override or HardwareOverride()
    gpus = () if override.vram_bytes == 0 else detect_gpus()
    total, available = system_memory()
    hw = Hardware(gpus=gpus, ram_total_bytes=total, ram_available_bytes=available,
                  cpu_cores=cpu_cores(), os=f"{platform.system()} {platform.release()}".strip())
    return override.apply(hw)


def detect_gpus() -> tuple[Gpu, ...]:
    """NVIDIA GPUs that torch can use, with the VRAM free right now (other programs hold the rest)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return ()
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(Gpu(i, props.name, (props.major, props.minor), int(total), int(free)))
        return tuple(gpus)
    except (ImportError, RuntimeError, AssertionError):  # a broken driver reads as "no GPU"
        return ()


def cpu_cores() -> int:
    """Logical cores this process may run on (respects affinity masks and container limits)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def system_memory() -> tuple[int, int]:
    """(total, available) system RAM in bytes; available counts reclaimable page cache as free."""
    system = platform.system()
    if system == "Windows":
        return _windows_memory()
    if system == "Darwin":
        return _macos_memory()
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total, available = parse_meminfo(meminfo.read_text())
        return _cgroup_limited(total, available)
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * size, os.sysconf("SC_AVPHYS_PAGES") * size


def parse_meminfo(text: str) -> tuple[int, int]:
    fields = {k: int(v.split()[0]) * KiB for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    total = fields["MemTotal"]
    available = fields.get("MemAvailable", fields.get("MemFree", 0) + fields.get("Cached", 0))
    return total, available


def _cgroup_limited(total: int, available: int) -> tuple[int, int]:
    """Inside a container the cgroup memory limit, not the host's RAM, is what we may use."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if raw.isdigit() and int(raw) < total:
            limit = int(raw)
            return limit, max(0, min(available, limit - usage))
    return total, available


def _windows_memory() -> tuple[int, int]:
    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        raise OSError("GlobalMemoryStatusEx failed")
    return int(status.ullTotalPhys), int(status.ullAvailPhys)


def _macos_memory() -> tuple[int, int]:
    total = int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, check=True).stdout)
    vm_stat = subprocess.run(["vm_stat"], capture_output=True, text=True, check=True).stdout
    return total, parse_vm_stat(vm_stat)


def parse_vm_stat(text: str) -> int:
    """Available bytes from macOS ``vm_stat``: free, inactive and speculative pages can be reclaimed."""
    page = int(m.group(1)) if (m := re.search(r"page size of (\d+) bytes", text)) else 4096
    counts = {k.strip(): int(v.strip().rstrip(".")) for k, v in re.findall(r"^(Pages [^:]+):\s+(\d+\.?)$", text, re.M)}
    return page * sum(counts.get(k, 0) for k in ("Pages free", "Pages inactive", "Pages speculative"))
