"""`gptoss doctor`: machines described as facts get the right verdict and advice a person can act on; the real
gathering runs here; the command prints a next step and exits 0 only when gptoss can run."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from gptoss_cli import doctor
from gptoss_cli.cli import main
from gptoss_cli.doctor import Facts, KernelRun, judge
from gptoss_cli.hardware import GiB, Gpu
from gptoss_cli.install_logic import SmiGpu

RTX4090 = Gpu(0, "NVIDIA GeForce RTX 4090", (8, 9), 24 * GiB, 22 * GiB)
RTX5090 = Gpu(0, "NVIDIA GeForce RTX 5090", (12, 0), 32 * GiB, 30 * GiB)
PY = r"C:\Users\Ada Lovelace\AppData\Local\gptoss\venv\Scripts\python.exe"


def smi(driver: str, gpu: Gpu = RTX4090) -> tuple[SmiGpu, ...]:
    return (SmiGpu(driver, gpu.name, gpu.total_bytes >> 20, gpu.capability),)


HEALTHY = Facts(
    system="Windows", python="3.12.7", python_exe=PY, smi=smi("581.57"), torch="2.13.0+cu130", torch_error=None,
    torch_cuda="13.0", cuda_error=None, gpus=(RTX4090,), arch_list=("sm_75", "sm_80", "sm_86", "sm_90", "sm_100",
                                                                    "sm_120"),
    triton="triton-windows 3.7.1", triton_error=None, official_triton_on_windows=False,
    kernel=KernelRun(True, seconds=1.3), models_dir=r"C:\Users\Ada Lovelace\AppData\Local\gptoss\Cache\models",
    models_writable=True, free_bytes=500 * GiB, pulled=(), numba="0.68.1", avx512=False, cores=16)
CPU_ONLY = replace(HEALTHY, smi=None, torch="2.13.0+cpu", torch_cuda=None, gpus=(), arch_list=(), kernel=None)


def status(report: doctor.Report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def check(report: doctor.Report, name: str) -> doctor.Check:
    return next(c for c in report.checks if c.name == name)


def test_a_healthy_rtx_pc_is_ready_and_is_told_to_pull() -> None:
    report = judge(HEALTHY)
    assert report.usable and set(status(report).values()) == {"ok"}
    assert report.next_command == "gptoss pull gpt-oss-20b"
    assert judge(replace(HEALTHY, pulled=("gpt-oss-20b",))).next_command == "gptoss chat"
    assert "RTX 4090" in check(report, "gpu").detail and "8.9" in check(report, "gpu").detail


def test_no_gpu_is_usable_but_warned_slow() -> None:
    report = judge(CPU_ONLY)
    assert report.usable
    assert status(report)["gpu"] == "warn" and "slow" in check(report, "gpu").advice
    assert status(report)["kernel"] == "skip" and status(report)["triton"] == "skip"


def test_a_cpu_torch_on_a_gpu_pc_fails_with_the_reinstall_command() -> None:
    report = judge(replace(CPU_ONLY, smi=smi("581.57")))
    torch = check(report, "torch")
    assert not report.usable and torch.status == "fail"
    assert "https://download.pytorch.org/whl/cu130" in torch.advice and "install.ps1" in torch.advice
    assert f'& "{PY}" -m pip uninstall -y torch; & "{PY}" -m pip install' in torch.advice, "PowerShell quoting"
    assert report.next_command == torch.command and torch.command in torch.advice


def test_a_driver_too_old_for_the_torch_build_names_both_ways_out() -> None:
    report = judge(replace(HEALTHY, smi=smi("572.16"), gpus=(), cuda_error="The NVIDIA driver on your system is too "
                                                                             "old (found version 12080)."))
    driver = check(report, "driver")
    assert not report.usable and driver.status == "fail"
    assert "needs >= 580" in driver.detail
    assert "Update the NVIDIA driver to >= 580" in driver.advice and "whl/cu126" in driver.advice
    assert report.next_command == driver.command and "whl/cu126" in driver.command
    assert "too old" in check(report, "torch").detail


def test_an_old_driver_with_cpu_torch_is_usable_but_says_to_update() -> None:
    report = judge(replace(CPU_ONLY, smi=smi("576.02", RTX5090)))
    driver = check(report, "driver")
    assert report.usable and driver.status == "warn"
    assert ">= 580" in driver.advice and "whl/cu130" in driver.advice


def test_missing_torch_fails_and_the_next_command_installs_it() -> None:
    report = judge(replace(CPU_ONLY, torch=None, torch_error="ModuleNotFoundError: No module named 'torch'"))
    assert not report.usable and status(report)["torch"] == "fail"
    assert report.next_command.endswith("--index-url https://download.pytorch.org/whl/cpu")
    assert '"torch==2.13.*"' in report.next_command


def test_missing_triton_costs_speed_not_function() -> None:
    report = judge(replace(HEALTHY, triton=None, triton_error="ModuleNotFoundError: No module named 'triton'",
                           kernel=None))
    triton = check(report, "triton")
    assert report.usable and triton.status == "warn"
    assert "slower torch path" in triton.advice and '"triton-windows>=3.7,<3.8"' in triton.advice
    linux = judge(replace(HEALTHY, system="Linux", python_exe="/home/ada/my venv/bin/python", triton=None,
                          triton_error="x", kernel=None))
    assert "'/home/ada/my venv/bin/python' -m pip install \"triton==3.7.*\"" in check(linux, "triton").advice


def test_openai_triton_on_windows_is_named_and_replaced() -> None:
    report = judge(replace(HEALTHY, triton="triton 3.7.1", official_triton_on_windows=True, kernel=None))
    triton = check(report, "triton")
    assert triton.status == "warn" and "does not run on Windows" in triton.detail
    assert "pip uninstall -y triton" in triton.advice


def test_the_cpu_share_of_offloaded_experts_is_reported() -> None:
    """Experts kept in RAM are partly computed by the CPU: the check names the team and the decode it gets; a
    numba that does not import costs speed with models that do not fit VRAM, not function; no GPU: not used."""
    assert check(judge(HEALTHY), "offload").detail == (
        "numba 0.68.1; 14 of 16 cores compute part of each expert kept in RAM (no AVX-512: the slower fp16 decode)")
    assert "16-lane" in check(judge(replace(HEALTHY, avx512=True)), "offload").detail
    broken = judge(replace(HEALTHY, numba=None, numba_error="ImportError: no llvmlite"))
    assert broken.usable and status(broken)["offload"] == "warn"
    assert "no llvmlite" in check(broken, "offload").detail and "numba>=0.60" in check(broken, "offload").command
    assert status(judge(CPU_ONLY))["offload"] == "skip"


def test_a_failed_kernel_falls_back_to_the_torch_path() -> None:
    report = judge(replace(HEALTHY, kernel=KernelRun(False, error="RuntimeError: PTX compiled with unsupported "
                                                                  "toolchain")))
    kernel = check(report, "kernel")
    assert report.usable and kernel.status == "warn"
    assert "torch path" in kernel.advice and "Visual C++" in kernel.advice and "PTX" in kernel.detail


def test_a_triton_that_does_not_pair_with_torch_is_flagged() -> None:
    report = judge(replace(HEALTHY, triton="triton-windows 3.5.1"))
    assert status(report)["triton"] == "warn" and "Triton 3.7" in check(report, "triton").detail


def test_a_torch_without_kernels_for_the_gpu_fails() -> None:
    report = judge(replace(HEALTHY, smi=smi("572.16", RTX5090), gpus=(RTX5090,), torch="2.13.0+cu126",
                           torch_cuda="12.6", arch_list=("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86",
                                                         "sm_90")))
    torch = check(report, "torch")
    assert not report.usable and torch.status == "fail" and "no kernels" in torch.detail


@pytest.mark.parametrize("arch_list, cap, covered", [
    (("sm_80", "sm_86", "sm_90"), (8, 9), True), (("sm_80", "sm_86", "sm_90"), (12, 0), False),
    (("sm_90", "compute_90"), (12, 0), True), (("sm_100", "sm_120"), (12, 1), True),
    (("sm_90a",), (9, 0), True), ((), (12, 0), True), (("sm_86",), None, True),
])
def test_torch_arch_lists_cover_the_gpus_they_can_run(arch_list, cap, covered) -> None:
    assert doctor._arch_covers(arch_list, cap) is covered


def test_disk_space_and_the_model_folder() -> None:
    low = judge(replace(HEALTHY, free_bytes=8 * GiB))
    assert low.usable and status(low)["disk"] == "warn"
    assert "gpt-oss-20b needs 12.8 GB, gpt-oss-120b 60.8 GB" in check(low, "disk").detail
    assert "GPTOSS_MODELS" in check(low, "disk").advice
    assert status(judge(replace(HEALTHY, free_bytes=8 * GiB, pulled=("gpt-oss-20b",))))["disk"] == "ok"
    locked = judge(replace(HEALTHY, models_writable=False))
    assert not locked.usable and status(locked)["models"] == "fail"


def test_download_sizes_are_the_official_checkpoints() -> None:
    assert doctor.model_bytes("gpt-oss-20b") == 13_761_264_768
    assert doctor.model_bytes("gpt-oss-120b") == 65_248_815_744


def test_gathering_on_this_machine(tmp_path: Path) -> None:
    facts = doctor.gather(tmp_path / "models")
    assert facts.python == platform.python_version() and facts.python_exe == sys.executable
    assert facts.torch is not None and facts.torch_error is None
    assert facts.models_dir == str(tmp_path / "models") and facts.models_writable
    assert facts.free_bytes and facts.free_bytes > 0 and facts.pulled == ()
    capable = [g for g in facts.gpus if g.capability is None or g.capability >= (8, 0)]
    assert (facts.kernel is None) == (not capable or facts.triton is None or facts.official_triton_on_windows)
    import numba

    assert facts.numba == numba.__version__ and facts.numba_error is None and facts.cores >= 1
    json.dumps(judge(facts).to_dict(facts))  # everything in the report is JSON


def test_triton_status_explains_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from gptoss_cli.model import fast

    ok, reason = doctor.triton_status()
    if not torch.cuda.is_available():
        assert not ok and "no CUDA device" in reason and "torch path" in reason
    monkeypatch.setattr(doctor, "_import_triton", lambda: (None, "ModuleNotFoundError: No module named 'triton'"))
    monkeypatch.setattr(fast, "triton_available", lambda: (False, "Triton is not importable (ModuleNotFoundError)"))
    ok, reason = doctor.triton_status()
    assert not ok and "slower torch path" in reason and "pip install" in reason
    monkeypatch.setattr(doctor, "_import_triton", lambda: ("triton-windows 3.7.1", None))
    monkeypatch.setattr(fast, "triton_available", lambda: (True, "ok"))
    assert doctor.triton_status() == (True, "triton-windows 3.7.1")
    monkeypatch.setattr(doctor, "_import_triton", lambda: ("triton 3.7.1", None))
    monkeypatch.setattr(doctor.platform, "system", lambda: "Windows")
    ok, reason = doctor.triton_status()
    assert not ok and "does not run on Windows" in reason and "triton-windows" in reason


def test_the_triton_probe_kernel_computes_the_sum() -> None:
    pytest.importorskip("triton", reason="Triton is not installed here")
    done = subprocess.run([sys.executable, "-c", "from gptoss_cli import triton_probe; print(triton_probe.run('cpu'))"],
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) >= 0


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["gptoss", "doctor", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().out


def test_the_command_prints_json_and_exits_by_verdict(monkeypatch, capsys, tmp_path: Path) -> None:
    code, out = run_cli(monkeypatch, capsys, "--json", "--models-dir", str(tmp_path))
    report = json.loads(out)
    assert [c["name"] for c in report["checks"]] == ["python", "gpu", "driver", "torch", "triton", "kernel",
                                                      "offload", "models", "disk"]
    assert code == (0 if report["usable"] else 1)
    assert report["facts"]["models_dir"] == str(tmp_path)


def test_the_command_ends_with_the_next_step(monkeypatch, capsys, tmp_path: Path) -> None:
    healthy = replace(HEALTHY, models_dir=str(tmp_path))
    monkeypatch.setattr("gptoss_cli.doctor_view.gather", lambda models_dir=None: healthy)
    code, out = run_cli(monkeypatch, capsys)
    assert code == 0
    assert out.rstrip().splitlines()[-1] == "Ready. Next: gptoss pull gpt-oss-20b"
    broken = replace(CPU_ONLY, smi=smi("581.57"))
    monkeypatch.setattr("gptoss_cli.doctor_view.gather", lambda models_dir=None: broken)
    code, out = run_cli(monkeypatch, capsys)
    assert code == 1 and "fail torch" in out.replace("  ", " ") and "-> Install the CUDA cu130 build" in out
