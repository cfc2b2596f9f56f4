"""launch.sh: the one entry point."""

import subprocess
from pathlib import Path

import data.torchvision_compat as compat

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_command_prints_usage_and_exits_2():
    result = subprocess.run([ROOT / "launch.sh", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr and "usage:" in result.stderr


def test_no_command_prints_usage_and_exits_2():
    result = subprocess.run([ROOT / "launch.sh"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_unknown_benchmark_is_a_one_line_error():
    result = subprocess.run([ROOT / "launch.sh", "bench", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nope" in result.stderr


def test_torchvision_imports_through_the_compat_module():
    import torch

    model = compat.torchvision.models.resnet18(weights=None, num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    from torchvision.transforms import v2  # works once the compat module has run

    assert v2.RandomHorizontalFlip(p=1.0)(torch.arange(4.0).view(1, 1, 4)).flatten().tolist() == [
        3.0, 2.0, 1.0, 0.0,
    ]  # fmt: skip


def test_the_gpu_bench_without_a_gpu_says_so_in_one_line_and_exits_0():
    result = subprocess.run([ROOT / "launch.sh", "bench", "gpu"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "bench gpu: no CUDA GPU visible; nothing to measure (run it on a GPU machine)"
    ]
