"""Safe exploration (Assumption 4), Lemma 5/6 and L̂: the Hadamard Gram against explicit φφᵀ, the in-place
shifted-Cholesky certificate against two rank methods, and the exact failure cases."""
import numpy as np
import pytest
import torch
from torch import nn

from eeray.diagnostics import MemoryBudgetError, SafeExplorationError
from eeray.diagnostics.hadamard import form_hadamard_gram, gram_certificate, shifted_cholesky_in_place
from eeray.diagnostics.safety import (assumption4_report, backbone_features, head_gates, lemma5_report,
                                      lipschitz_hat, random_gate_certificate)
from eeray.surgery import to_ee_model


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_z(n, m, seed=0):
    z = torch.randn(n, m - 1, generator=gen(seed), dtype=torch.float64)
    return torch.cat([z, torch.ones(n, 1, dtype=torch.float64)], 1)  # constant neuron last


def explicit_phi(z, s):
    """φ (n, m_H·m_{H−1}): row i = [s_i1 z_iᵀ, …, s_iK z_iᵀ] (docs/paper-choices.md, Definitions)."""
    return (s[:, :, None] * z[:, None, :]).reshape(z.shape[0], -1)


def test_hadamard_gram_equals_explicit_phi_phit_in_blocks():
    z, s = random_z(7, 5), torch.rand(7, 3, generator=gen(1), dtype=torch.float64)
    phi = explicit_phi(z, s)
    gram = torch.full((7, 7), float("nan"), dtype=torch.float64)  # the upper triangle is never read
    abs_rows = form_hadamard_gram(z, s, gram, block=2)
    ref = phi @ phi.T
    torch.testing.assert_close(torch.tril(gram), torch.tril(ref), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(abs_rows, ref.abs().sum(1), rtol=1e-13, atol=1e-13)


def test_shifted_cholesky_runs_in_place():
    z, s = random_z(9, 4), torch.rand(9, 3, generator=gen(1), dtype=torch.float64)
    gram = torch.empty(9, 9, dtype=torch.float64)
    abs_rows = form_hadamard_gram(z, s, gram, block=4)
    ref = explicit_phi(z, s) @ explicit_phi(z, s).T
    ptr = gram.data_ptr()
    ok, failed, delta = shifted_cholesky_in_place(gram, float(abs_rows.max()))
    assert ok and failed == 0 and gram.data_ptr() == ptr
    assert delta == pytest.approx(9 * np.finfo(np.float64).eps * float(ref.abs().sum(0).max()), rel=1e-12)
    expected = torch.linalg.cholesky(ref - delta * torch.eye(9, dtype=torch.float64))
    torch.testing.assert_close(torch.tril(gram), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("second_method", ["eigvalsh", "pivoted_cholesky"])
def test_certificate_true_on_generic_false_on_duplicate_samples(second_method):
    z = random_z(12, 5)
    s = torch.sigmoid(z @ torch.randn(5, 4, generator=gen(2), dtype=torch.float64))  # m_H·m_{H−1} = 20 >= 12
    generic = gram_certificate(z, s, second_method=second_method)
    assert generic.certified and generic.second_rank == 12 and generic.agree
    dup_z, dup_s = z.clone(), s.clone()
    dup_z[7], dup_s[7] = z[3], s[3]  # sample 7 duplicates sample 3: two equal rows of φ
    dup = gram_certificate(dup_z, dup_s, second_method=second_method)
    assert not dup.certified and dup.failed_pivot > 0 and dup.second_rank == 11 and dup.agree
    assert dup.second_method == second_method


def test_auto_second_method_follows_the_memory_budget():
    z, s = random_z(40, 3), torch.rand(40, 20, generator=gen(1), dtype=torch.float64)
    base = 40 * 40 * 8 + (z.numel() + s.numel()) * 8
    assert gram_certificate(z, s).second_method == "eigvalsh"
    small = gram_certificate(z, s, memory_budget_bytes=base + 2 * 40 * 8 * 5)  # Gram fits, a second n×n does not
    assert small.second_method == "pivoted_cholesky" and small.certified == (small.second_rank == 40)
    with pytest.raises(MemoryBudgetError) as err:
        gram_certificate(z, s, memory_budget_bytes=base - 1)
    assert err.value.needed_bytes == base + 2 * 40 * 8


def test_necessary_width_condition_fails_fast_with_the_smallest_m_H():
    with pytest.raises(SafeExplorationError, match=r"m_H = 3 is invalid: .*3·20 = 60 < n = 100; the smallest m_H "
                                                   r"that could satisfy it is 5 \(the paper uses ⌈2n/m_\(H−1\)⌉ = 10"):
        random_gate_certificate(random_z(100, 20), 3)


def test_random_gate_certificate_table2_sizes_and_seed_determinism():
    n, m = 300, 11
    m_H = -(-2 * n // m)  # ⌈2n/m_{H−1}⌉ = 55
    z = random_z(n, m)
    a, b = random_gate_certificate(z, m_H, seed=5), random_gate_certificate(z, m_H, seed=5)
    assert a.certified and a.second_rank == n and a.agree
    assert (a.shift, a.lambda_min, a.lambda_max) == (b.shift, b.lambda_min, b.lambda_max)


# ---------------------------------------------------------------------------- EE model: Lemma 5, Lemma 6, L̂
def ee_model(n=6, m_y=2, m_H=3):
    torch.manual_seed(4)
    base = nn.Sequential(nn.Linear(4, 5), nn.Softplus(), nn.Linear(5, 7), nn.Softplus(), nn.Linear(7, m_y)).double()
    x = torch.randn(n, 4, generator=gen(3), dtype=torch.float64)
    model = to_ee_model(base, x, m_H=m_H, gate_scale=2.0)  # z̄ = 5 softplus units, m_{H−1} = 6
    model.head.freeze_gate()
    with torch.no_grad():  # move θ_(H−1) away from the frozen R^(j)
        model.head.hidden.weight.add_(0.5 * torch.randn(model.head.hidden.weight.shape, generator=gen(5),
                                                        dtype=torch.float64))
    return model, x


def lemma6_factors(model, x, j):
    """φ_j = φ(R^(j), θ_(1:H−2)) with the frozen gate and D_j = diag(w_j) ⊗ I_{m_{H−1}}, explicitly."""
    z = backbone_features(model, x)
    rows = slice(j * model.head.m_H, (j + 1) * model.head.m_H)
    r_j = torch.cat([model.head.gate_weight[rows], model.head.gate_bias[rows, None]], 1)  # (m_H, m_{H−1})
    phi = explicit_phi(z, torch.sigmoid(model.head.gate_scale * z @ r_j.T))
    d_j = torch.kron(torch.diag(model.head.out_weight[j].detach()), torch.eye(z.shape[1], dtype=torch.float64))
    return phi, d_j


def test_lemma6_linear_form_and_lemma5_gram_match_explicit_construction():
    model, x = ee_model()
    with torch.no_grad():
        out = model(x)  # (n, m_y)
    z = backbone_features(model, x)
    for j in range(2):
        phi, d_j = lemma6_factors(model, x, j)
        w_j, _ = model.head.head_weights(j)  # θ_(H−1,j) with the bias column: vec stacks its rows
        torch.testing.assert_close(phi @ d_j @ w_j.detach().reshape(-1), out[:, j], rtol=1e-12, atol=1e-12)
        s, w = head_gates(model, z, j)
        gram = torch.empty(6, 6, dtype=torch.float64)
        form_hadamard_gram(z, s * w, gram, block=4)
        ref = (phi @ d_j) @ (phi @ d_j).T
        torch.testing.assert_close(torch.tril(gram), torch.tril(ref), rtol=1e-12, atol=1e-12)
    report = lemma5_report(model, x)
    assert report.all_full_rank and [h.second_rank for h in report.heads] == [6, 6]


def test_lemma5_fails_on_duplicate_samples_and_assumption4_runs_on_ee_model():
    model, x = ee_model()
    x_dup = x.clone()
    x_dup[4] = x[1]
    report = lemma5_report(model, x_dup)
    assert not report.all_full_rank and [h.second_rank for h in report.heads] == [5, 5]
    a4 = assumption4_report(model, x, seed=0)
    assert (a4.n, a4.m_H, a4.m_H_minus_1) == (6, 3, 6) and a4.gram.certified and a4.gram.agree


def test_assumption4_on_ee_model_checks_width_before_any_forward():
    model, _ = ee_model()
    x = torch.randn(19, 4, dtype=torch.float64)  # 3·6 = 18 < 19
    with pytest.raises(SafeExplorationError, match="smallest m_H that could satisfy it is 4"):
        assumption4_report(model, x)


@pytest.mark.parametrize("loss,l_ell", [("mse", 2.0), ("ce", 0.5)])
def test_lipschitz_hat_matches_definition_and_bounds_the_hessian(loss, l_ell):
    model, x = ee_model()
    value = lipschitz_hat(model, x, loss)
    factors = [lemma6_factors(model, x, j) for j in range(2)]
    row_norms = torch.stack([(phi @ d).norm(dim=1) for phi, d in factors])  # (m_y, n)
    assert value == pytest.approx(l_ell / 6 * float((row_norms.max(0).values ** 2).sum()), rel=1e-12)
    if loss == "mse":  # ∇²L̂ = (2/n)·blockdiag_j (φ_jD_j)ᵀ(φ_jD_j): its largest eigenvalue is at most L̂
        hess_max = max(float(torch.linalg.eigvalsh((phi @ d).T @ (phi @ d))[-1]) for phi, d in factors) * 2 / 6
        assert hess_max <= value
