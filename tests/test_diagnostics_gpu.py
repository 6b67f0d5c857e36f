"""CUDA checks (run on the GPU machine with ``-m gpu``): the same answers as on the CPU, and the safe-exploration
certificate really works in place on the device (no second n×n allocation)."""
import pytest
import torch
from torch import nn

from eeray.diagnostics import alignment_report
from eeray.diagnostics.hadamard import form_hadamard_gram, shifted_cholesky_in_place

pytestmark = pytest.mark.gpu  # without CUDA these fail (tests/conftest.py), never skip


def test_alignment_report_on_cuda_equals_cpu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.Softplus(),
                        nn.BatchNorm1d(16), nn.Linear(16, 3)).double()
    x = torch.randn(40, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    cpu = alignment_report(net, x, y, "ce", certificate=True)
    gpu = alignment_report(net.cuda(), x.cuda(), y.cuda(), "ce", certificate=True)
    assert (gpu.rank, gpu.aligned, gpu.second_value) == (cpu.rank, cpu.aligned, cpu.second_value)
    assert gpu.lambda_max == pytest.approx(cpu.lambda_max, rel=1e-10)
    assert gpu.certificate.bound == pytest.approx(cpu.certificate.bound, rel=1e-8)


def test_shifted_cholesky_allocates_no_second_gram_on_cuda():
    n = 4096
    z = torch.randn(n, 64, dtype=torch.float64, device="cuda") / 8
    s = torch.sigmoid(z @ torch.randn(64, 80, dtype=torch.float64, device="cuda"))
    gram = torch.empty(n, n, dtype=torch.float64, device="cuda")
    abs_rows = form_hadamard_gram(z, s, gram, block=512)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    ok, _, _ = shifted_cholesky_in_place(gram, float(abs_rows.max()))
    torch.cuda.synchronize()
    assert ok
    assert torch.cuda.max_memory_allocated() - before < 0.25 * n * n * 8  # workspace only, not an n×n copy
