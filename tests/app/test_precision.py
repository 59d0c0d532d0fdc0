"""Training precision: 'auto' picks bf16 only on a CPU with native bf16 instructions; the
choice reaches the Trainer and the run's record; a bad value is refused up front."""

from __future__ import annotations

import pytest
import torch

from lrlora.app.args import TrainArgs
from lrlora.app.precision import autocast, cpu_flags, resolve_precision


def test_auto_is_bf16_only_on_a_cpu_with_native_bf16():
    assert resolve_precision("auto", "cpu", {"avx2", "fma"}) == "fp32"
    assert resolve_precision("auto", "cpu", {"avx512f", "avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", "cpu", {"amx_bf16"}) == "bf16"
    assert resolve_precision("auto", "cuda", {"avx512_bf16"}) == "fp32"  # GPUs: as before
    assert resolve_precision("bf16", "cpu", set()) == "bf16"
    assert resolve_precision("fp32", "cpu", {"amx_bf16"}) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_bf16_autocast_runs_the_matmul_in_bf16_and_fp32_does_not():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with autocast("bf16", "cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (x @ w).dtype == torch.float32


def test_train_args_refuse_an_unknown_precision_before_loading_anything():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainArgs(task="sst2", precision="fp16")
