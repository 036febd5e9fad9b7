"""Hardware detection and what-if overrides."""

from __future__ import annotations

import pytest

from gptoss_cli.errors import UsageError
from gptoss_cli.hardware import (
    WHAT_IF_GPU,
    GiB,
    Gpu,
    Hardware,
    HardwareOverride,
    MiB,
    detect,
    parse_meminfo,
    parse_size,
    parse_vm_stat,
)


@pytest.mark.parametrize("text, expected", [
    ("12GB", 12 * GiB), ("12GiB", 12 * GiB), ("12 gb", 12 * GiB), ("12G", 12 * GiB),
    ("12000MB", 12000 * MiB), ("1.5TB", 1536 * GiB), ("512MiB", 512 * MiB), ("0", 0), ("100B", 100),
])
def test_sizes_parse_in_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12", "twelve", "12XB", "-3GB", "", "GB"])
def test_unreadable_sizes_are_usage_errors_with_an_example(text: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_size(text, "--vram")
    assert "--vram" in exc.value.message and "GB" in exc.value.hint


RTX = Gpu(0, "NVIDIA GeForce RTX 4070", (8, 9), 12 * GiB, 11 * GiB)
MACHINE = Hardware(gpus=(RTX,), ram_total_bytes=64 * GiB, ram_available_bytes=40 * GiB, cpu_cores=16, os="Windows 11")


def test_a_vram_override_caps_the_detected_gpu_and_keeps_its_name() -> None:
    hw = HardwareOverride.from_strings(vram="8GB").apply(MACHINE)
    assert hw.gpus == (Gpu(0, RTX.name, (8, 9), 8 * GiB, 8 * GiB),)
    assert hw.ram_available_bytes == 40 * GiB


def test_a_vram_override_without_a_gpu_stands_in_for_one() -> None:
    hw = HardwareOverride.from_strings(vram="16GB", ram="32GB").apply(Hardware((), 8 * GiB, 6 * GiB, 4, "Linux"))
    assert hw.gpus == (Gpu(0, WHAT_IF_GPU, None, 16 * GiB, 16 * GiB),)
    assert (hw.ram_total_bytes, hw.ram_available_bytes) == (32 * GiB, 32 * GiB)


def test_vram_zero_means_no_gpu() -> None:
    assert HardwareOverride.from_strings(vram="0").apply(MACHINE).gpus == ()


def test_meminfo_gives_total_and_available() -> None:
    text = "MemTotal:       32768000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\nCached: 5 kB\n"
    assert parse_meminfo(text) == (32768000 * 1024, 20000000 * 1024)


def test_vm_stat_counts_free_inactive_and_speculative_pages() -> None:
    text = ("Mach Virtual Memory Statistics: (page size of 16384 bytes)\n"
            "Pages free:                               10000.\n"
            "Pages active:                            500000.\n"
            "Pages inactive:                           20000.\n"
            "Pages speculative:                         3000.\n"
            "Pages wired down:                        100000.\n")
    assert parse_vm_stat(text) == 33000 * 16384


def test_detection_on_this_machine_is_plausible() -> None:
    hw = detect(HardwareOverride(vram_bytes=0))  # no GPU probe: the suite must not depend on one
    assert hw.gpus == ()
    assert 0 < hw.ram_available_bytes <= hw.ram_total_bytes
    assert hw.cpu_cores >= 1 and hw.os


def test_gpus_are_read_from_torch_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import torch

    from gptoss_cli.hardware import detect_gpus

    props = [types.SimpleNamespace(name="NVIDIA GeForce RTX 4090", major=8, minor=9),
             types.SimpleNamespace(name="NVIDIA GeForce RTX 3060", major=8, minor=6)]
    memory = [(20 * GiB, 24 * GiB), (11 * GiB, 12 * GiB)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: memory[i])
    assert detect_gpus() == (Gpu(0, "NVIDIA GeForce RTX 4090", (8, 9), 24 * GiB, 20 * GiB),
                             Gpu(1, "NVIDIA GeForce RTX 3060", (8, 6), 12 * GiB, 11 * GiB))
