import json

import pytest

from launch.hardware import Gpu, Machine, misfits, parse_nvidia_smi, parse_rocm_smi
from launch.recipe import HardwareSpec

NVIDIA_SMI = "NVIDIA H100 80GB HBM3, 81559, 9.0\nNVIDIA H100 80GB HBM3, 81559, 9.0\n"
ROCM_SMI = json.dumps({
    "card0": {"Card Series": "AMD Instinct MI355X", "GFX Version": "gfx950", "VRAM Total Memory (B)": "309220868096"},
    "card1": {"Card series": "AMD Instinct MI355X", "GFX Version": "gfx950", "VRAM Total Memory (B)": "309220868096"},
    "system": {"Driver version": "6.12"},
})


def test_parse_nvidia_smi():
    gpus = parse_nvidia_smi(NVIDIA_SMI)
    assert len(gpus) == 2
    assert gpus[0] == Gpu("nvidia", "NVIDIA H100 80GB HBM3", "sm90", pytest.approx(79.65, abs=0.01))


def test_parse_rocm_smi_across_key_spellings():
    gpus = parse_rocm_smi(ROCM_SMI)
    assert [g.arch for g in gpus] == ["gfx950", "gfx950"]
    assert gpus[1].name == "AMD Instinct MI355X" and gpus[0].memory_gib == pytest.approx(288, abs=0.1)


H100x1 = Machine(parse_nvidia_smi(NVIDIA_SMI.splitlines()[0]), "nvidia-smi", "0.5.17")
MI355x4 = Machine(parse_rocm_smi(ROCM_SMI) * 2, "rocm-smi", "0.5.17")


@pytest.mark.parametrize("spec, machine, reason", [
    (HardwareSpec(vendor="any", gpu_count=1), Machine(), "no GPU found"),
    (HardwareSpec(vendor="amd", gpu_count=1), H100x1, "needs AMD GPUs, this machine has NVIDIA"),
    (HardwareSpec(vendor="nvidia", archs=["sm120"], gpu_count=1), H100x1, "needs GPU arch sm120, found sm90"),
    (HardwareSpec(vendor="nvidia", gpu_count=1, min_memory_gib=90), H100x1, "needs 90 GiB per GPU, largest here has 79.6 GiB"),
    (HardwareSpec(vendor="amd", archs=["gfx950"], gpu_count=8), MI355x4, "needs 8 GPUs, 4 suitable here"),
])
def test_misfit_reasons(spec, machine, reason):
    assert misfits(spec, machine) == [reason]


@pytest.mark.parametrize("spec, machine", [
    (HardwareSpec(vendor="any", gpu_count=1), H100x1),
    (HardwareSpec(vendor="nvidia", archs=["sm90"], gpu_count=1, min_memory_gib=75), H100x1),
    (HardwareSpec(vendor="amd", archs=["gfx950"], gpu_count=4, min_memory_gib=250), MI355x4),
])
def test_fits(spec, machine):
    assert misfits(spec, machine) == []


def test_summary_counts_gpus():
    assert MI355x4.summary().startswith("4× AMD Instinct MI355X (gfx950, 288 GiB) [via rocm-smi]")
    assert "no GPU found" in Machine().summary()
