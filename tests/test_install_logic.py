"""The installer's decisions (driver + GPU -> torch build, torch -> triton-windows), which install.ps1 and
install.sh take from `python -m gptoss_cli.install_logic choose` rather than deciding themselves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptoss_cli import install_logic as il
from gptoss_cli.plan import MIN_CAPABILITY

ROOT = Path(__file__).resolve().parents[1]


def gpu(driver: str, cap: tuple[int, int] | None = (8, 9), name: str = "NVIDIA GeForce RTX 4090",
        mib: int = 24564) -> il.SmiGpu:
    return il.SmiGpu(driver=driver, name=name, memory_mib=mib, capability=cap)


def test_nvidia_smi_csv_with_or_without_units_and_compute_cap() -> None:
    text = ("572.16, NVIDIA GeForce RTX 4090, 24564 MiB, 8.9\n"
            "572.16, NVIDIA GeForce RTX 3060, 12288, 8.6\n"
            "535.54.03, Tesla T4, 15360\n"
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
            "580.95.05, NVIDIA RTX PRO 6000, [N/A], [N/A]\n")
    gpus = il.parse_nvidia_smi(text)
    assert [g.name for g in gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3060", "Tesla T4",
                                      "NVIDIA RTX PRO 6000"]
    assert gpus[0] == il.SmiGpu("572.16", "NVIDIA GeForce RTX 4090", 24564, (8, 9))
    assert gpus[2].capability is None and gpus[2].driver_version == (535, 54, 3)
    assert gpus[3].memory_mib is None and gpus[3].capability is None


def test_driver_versions_compare_as_numbers() -> None:
    assert il.parse_version("580.95.05") == (580, 95, 5) > il.parse_version("580.65.06")
    assert il.parse_version("572.16") < (580,) <= il.parse_version("580.88")
    assert il.show_version((560, 35, 5)) == "560.35.05" and il.show_version((561, 17)) == "561.17"


@pytest.mark.parametrize("system, smi, build, warned", [
    ("windows", gpu("581.57", (12, 0), "NVIDIA GeForce RTX 5090", 32607), "cu130", False),
    ("linux", gpu("580.95.05"), "cu130", False),
    ("windows", gpu("572.16"), "cu126", False),            # 12.6's own driver is 561.17 on Windows
    ("linux", gpu("570.124.06"), "cu126", False),
    ("windows", gpu("546.33", (8, 6)), "cu126", True),     # minor version compatibility: runs, with a warning
    ("linux", gpu("525.60.13", (8, 6)), "cu126", True),
    ("linux", gpu("520.61.05", (8, 6)), "cpu", True),      # older than every CUDA 12 driver
    ("windows", gpu("576.02", (12, 0), "NVIDIA GeForce RTX 5080"), "cpu", True),  # Blackwell needs 13.0 -> 580
    ("windows", gpu("581.57", (7, 5), "NVIDIA GeForce RTX 2080"), "cpu", True),   # pre-Ampere: gptoss uses the CPU
    ("linux", gpu("590.44.01", None), "cu130", False),     # compute capability unknown: torch finds out later
])
def test_the_build_follows_driver_and_gpu(system: str, smi: il.SmiGpu, build: str, warned: bool) -> None:
    choice = il.choose_torch(system, [smi])
    assert choice.build == build
    assert bool(choice.warnings) == warned
    assert choice.index_url == f"https://download.pytorch.org/whl/{build}"
    assert choice.torch_requirement == f"torch=={il.TORCH_SERIES}.*"
    assert choice.reasons, "the installer must be able to say why"


def test_no_gpu_or_asked_for_cpu_gets_the_cpu_build() -> None:
    none = il.choose_torch("windows", [])
    assert none.build == "cpu" and none.triton_requirement is None
    assert "slow" in none.warnings[0] and "driver" in none.warnings[0]
    forced = il.choose_torch("windows", [gpu("581.57")], force_cpu=True)
    assert forced.build == "cpu" and not forced.warnings


def test_the_reasons_name_the_driver_that_would_unlock_the_newer_build() -> None:
    choice = il.choose_torch("linux", [gpu("570.124.06")])
    assert "CUDA 13.0 would need driver >= 580.65.06" in " ".join(choice.reasons)
    too_old = il.choose_torch("windows", [gpu("576.02", (12, 0))])
    assert ">= 580" in too_old.warnings[0] and "run the installer again" in too_old.warnings[0]


def test_the_gpu_with_most_memory_decides() -> None:
    small_blackwell = gpu("576.02", (12, 0), "RTX 5060", 8151)
    big_ada = gpu("576.02", (8, 9), "RTX 4090", 24564)
    assert il.choose_torch("windows", [small_blackwell, big_ada]).build == "cu126"


def test_triton_windows_only_on_windows_with_a_cuda_build() -> None:
    assert il.choose_torch("windows", [gpu("581.57")]).triton_requirement == "triton-windows>=3.7,<3.8"
    assert il.choose_torch("linux", [gpu("581.57")]).triton_requirement is None  # torch's wheel brings triton
    assert il.choose_torch("windows", []).triton_requirement is None


@given(driver=st.tuples(st.integers(400, 700), st.integers(0, 200)),
       cap=st.one_of(st.none(), st.tuples(st.integers(3, 13), st.integers(0, 9))),
       system=st.sampled_from(["windows", "linux"]))
def test_a_cuda_choice_always_runs_on_that_gpu_and_driver(driver: tuple[int, int], cap: tuple[int, int] | None,
                                                          system: str) -> None:
    choice = il.choose_torch(system, [gpu(f"{driver[0]}.{driver[1]:02d}", cap)])
    if choice.build == "cpu":
        return
    build = next(b for b in il.CUDA_BUILDS if b.tag == choice.build)
    assert build.covers(cap)
    assert driver >= build.floor_driver(system)
    assert cap is None or cap >= il.MIN_CAPABILITY
    # never an older build than the driver allows
    newer = il.CUDA_BUILDS[:il.CUDA_BUILDS.index(build)]
    assert not any(b.covers(cap) and driver >= b.full_driver[system] for b in newer)


@pytest.mark.parametrize("torch_version, requirement", [
    ("2.13.0+cu130", "triton-windows>=3.7,<3.8"), ("2.12.1", "triton-windows>=3.7,<3.8"),
    ("2.10.0+cu126", "triton-windows>=3.6,<3.7"), ("2.9.1", "triton-windows>=3.5,<3.6"),
    ("2.6.0", "triton-windows>=3.2,<3.3"), ("2.14.1+cu130", "triton-windows>=3.8,<3.9"),
])
def test_triton_windows_pairs_with_the_torch_minor(torch_version: str, requirement: str) -> None:
    assert il.triton_windows_requirement(torch_version) == requirement


def test_an_unknown_torch_has_no_pairing() -> None:
    with pytest.raises(ValueError, match="2.3"):
        il.triton_windows_requirement("2.3.1")


def test_tables_agree_with_the_rest_of_the_project() -> None:
    assert il.TORCH_SERIES in il.TRITON_FOR_TORCH
    assert il.MIN_CAPABILITY == MIN_CAPABILITY
    # CI runs the README's Linux install block verbatim, so its torch pin is the one CI tests
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme.split("<!-- install-linux -->", 1)[1].split("```", 2)[1]
    pins = re.findall(r"torch==(\d+\.\d+)\.\d+", install)
    assert pins and set(pins) == {il.TORCH_SERIES}, "CI must test the torch the installers install"


@pytest.mark.parametrize("installed, build, replace", [
    (None, "cu130", False), ("2.13.0+cu130", "cu130", False), ("2.13.0+cpu", "cu130", True),
    ("2.13.0+cu126", "cpu", True), ("2.12.1+cu130", "cu130", True), ("2.13.0", "cu130", True),
])
def test_a_torch_pip_would_keep_is_replaced_when_it_is_the_wrong_build(installed: str | None, build: str,
                                                                       replace: bool) -> None:
    choice = il.TorchChoice(build, "", il.TORCH_REQUIREMENT, None)
    assert il.must_replace_torch(installed, choice) is replace


def test_the_command_line_reads_what_powershell_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smi = tmp_path / "smi.txt"
    smi.write_bytes("\ufeff581.57, NVIDIA GeForce RTX 5090, 32607, 12.0\r\n".encode("utf-16-le"))
    assert il._main(["choose", "--os", "windows", "--smi-file", str(smi)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["build"] == "cu130" and out["triton_requirement"] == "triton-windows>=3.7,<3.8"
    assert isinstance(out["replace_installed_torch"], bool)
    used = set(re.findall(r"\$choice\.(\w+)", (ROOT / "install.ps1").read_text(encoding="utf-8")))
    assert used and used <= set(out), f"install.ps1 reads fields the JSON lacks: {used - set(out)}"


def test_no_nvidia_smi_means_no_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert il._main(["choose", "--os", "linux"]) == 0
    assert json.loads(capsys.readouterr().out)["build"] == "cpu"
