"""Alignment decisions on constructed cases with known answers, dense vs matrix-free agreement, the
Theorem-3 certificate, Q_T, schedules and ΔM."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from eeray.diagnostics import AlignmentOptions, alignment_report
from eeray.diagnostics.errors import DiagnosticsError
from eeray.diagnostics.gram import build_gram
from eeray.diagnostics.jacobian import FunctionalModel
from eeray.diagnostics.q_tracker import AlignmentTracker, QTracker, evaluation_schedule



def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)  # one per test: data do not depend on which tests ran before


def linear_model(weight: torch.Tensor) -> nn.Linear:
    """f(x) = W x (no bias): J = X ⊗ I, M = (XXᵀ) ⊗ I, so Col(J) is known exactly."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def rank2_design(n=6, g=None):
    """X (n, 3) of rank 2 (third column = first + second); an orthonormal basis of Col(X) and of its complement."""
    g = g or gen()
    a = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = torch.cat([a, a[:, :1] + a[:, 1:]], 1)
    q, _ = torch.linalg.qr(torch.cat([a, torch.randn(n, n - 2, generator=g, dtype=torch.float64)], 1))
    return x, q[:, :2], q[:, 2:]


@pytest.mark.parametrize("outside_fraction", [0.0, 0.2, 1e-10], ids=["inside", "outside", "nearly_inside"])
def test_rank_deficient_mse_case_exact_residual(outside_fraction):
    x, inside, outside = rank2_design()
    y = inside @ torch.tensor([3.0, -1.0], dtype=torch.float64)  # in Col(X)
    y = y / y.norm() * math.sqrt(1 - outside_fraction) + outside[:, 0] * math.sqrt(outside_fraction)  # ‖y‖ = 1
    rep = alignment_report(linear_model(torch.randn(1, 3, generator=gen(1), dtype=torch.float64)), x, y, "mse")
    assert (rep.method, rep.gram_size, rep.d, rep.rank) == ("dense", 6, 3, 2)
    assert rep.residual == pytest.approx(outside_fraction, abs=1e-15)
    assert abs(rep.lambda_min) <= rep.rank_threshold
    assert rep.aligned == (outside_fraction <= 1e-8)
    assert all(e == pytest.approx(outside_fraction, abs=1e-15) for e in rep.energy.values())  # mass only at λ = 0
    # rank augmentation: a component of relative size 1e-10 still lifts an eigenvalue above λ_max·N·eps
    assert rep.second_value == (2 if outside_fraction == 0.0 else 3)
    assert rep.disagree == (outside_fraction == 1e-10)


def test_bce_targets_inside_and_outside_column_space():
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    signs = 2.0 * labels.double() - 1  # Y_ℓ for bce
    other = torch.randn(8, 2, generator=gen(), dtype=torch.float64)
    x_in = torch.cat([signs[:, None] + other[:, :1], other], 1)  # Col(X) ∋ Y_ℓ
    rep = alignment_report(linear_model(torch.ones(1, 3, dtype=torch.float64)), x_in, labels, "bce")
    assert rep.aligned and rep.rank == 3 and rep.residual < 1e-28
    proj = other @ torch.linalg.lstsq(other, signs[:, None]).solution  # the exact residual outside Col(other)
    rep = alignment_report(linear_model(torch.ones(1, 2, dtype=torch.float64)), other, labels, "bce")
    assert not rep.aligned and rep.rank == 2
    assert rep.residual == pytest.approx(float(((signs[:, None] - proj) ** 2).sum() / 8), rel=1e-12)


def test_multi_output_ce_uses_kronecker_structure():
    x, inside, outside = rank2_design(n=5)
    labels = torch.tensor([0, 1, 0, 1, 1])
    model = linear_model(torch.randn(2, 3, generator=gen(1), dtype=torch.float64))
    rep = alignment_report(model, x, labels, "ce")
    y_l = 2 * torch.nn.functional.one_hot(labels, 2).double() - 1  # (n, 2); each column projected on Col(X)
    resid = y_l - inside @ (inside.T @ y_l)
    assert (rep.gram_size, rep.rank) == (10, 4)  # rank(X ⊗ I_2) = 2·2
    assert rep.residual == pytest.approx(float((resid ** 2).sum() / (y_l ** 2).sum()), rel=1e-12)


def small_net(width, m_y=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.Softplus(beta=3.0), nn.Linear(width, m_y)).double()


@pytest.mark.parametrize("width", [2, 20], ids=["underparameterised_d19_N60", "overparameterised_d163_N60"])
def test_dense_and_matrix_free_agree(width):
    g = gen()
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    net = small_net(width)
    dense = alignment_report(net, x, y, "ce", certificate=True)
    free = alignment_report(net, x, y, "ce", certificate=True, method="matrix_free")
    assert (dense.method, free.method) == ("dense", "matrix_free")
    assert dense.aligned == free.aligned == (width == 20) and not dense.disagree and not free.disagree
    # stated tolerances: ρ to 1e-6 relative when not aligned; when aligned, LSQR stops once
    # ‖r‖ <= 0.1·√tol·‖v‖ + atol·‖J‖·‖β‖ (membership is decided), so ρ is only known to be ~tol/100.
    # λ_max to 1e-8, the certificate's bound to 1e-4.
    if dense.aligned:
        assert dense.residual <= 1e-12 and free.residual <= 1e-9
    else:
        assert free.residual == pytest.approx(dense.residual, rel=1e-6)
    assert free.lambda_max == pytest.approx(dense.lambda_max, rel=1e-8)
    assert free.krylov_converged
    assert free.certificate.bound == pytest.approx(dense.certificate.bound, rel=1e-4)


def test_auto_method_falls_back_to_matrix_free_under_a_small_budget():
    g = gen()
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)
    rep = alignment_report(small_net(2), x, y, "ce", memory_budget_bytes=20_000)  # 4·N²·8 = 28,800 > budget
    assert rep.method == "matrix_free" and not rep.aligned
    rec = rep.to_record()
    assert rec["method"] == "matrix_free" and rec["gram_size"] == 30 and rec["d"] == 19 and math.isnan(rec["energy_1e-08"])
    assert rec["rank"] == -1 and rec["residual"] == pytest.approx(alignment_report(small_net(2), x, y, "ce").residual,
                                                                  rel=1e-6)


def test_certificate_linear_mse_matches_closed_form():
    x, inside, _ = rank2_design(n=7)
    y = inside @ torch.tensor([1.0, 2.0], dtype=torch.float64)  # aligned
    w = torch.randn(1, 3, generator=gen(2), dtype=torch.float64)
    rep = alignment_report(linear_model(w), x, y, "mse", certificate=True)
    cert = rep.certificate
    theta, xn, yn = w.numpy().ravel(), x.numpy(), y.numpy()
    resid = xn @ theta - yn
    assert cert.valid and cert.eta == 1.0 and cert.optimal_loss == 0.0
    assert cert.assumption1_residual < 1e-15  # S = all of θ for a linear model
    assert cert.loss == pytest.approx(resid @ resid / 7, rel=1e-12)
    assert cert.grad_norm == pytest.approx(np.linalg.norm(2 / 7 * xn.T @ resid), rel=1e-12)
    assert cert.distance == pytest.approx(np.linalg.norm(theta - np.linalg.pinv(xn) @ yn), rel=1e-9)
    assert cert.loss <= cert.bound


def test_certificate_bounds_the_loss_of_an_aligned_classifier():
    g = gen()
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    rep = alignment_report(small_net(30), x, y, "ce", certificate=True)
    cert = rep.certificate
    assert rep.aligned and cert.valid and cert.loss <= cert.bound + 1e-12 and cert.eta >= 0
    assert cert.assumption1_residual < 1e-12  # the last Linear (weight + bias) is S


# ---------------------------------------------------------------------------- Q_T and schedules
@pytest.mark.parametrize("kwargs,steps", [
    (dict(total_steps=10, unit="steps", every=3), (0, 3, 6, 9, 10)),
    (dict(total_steps=40, unit="epochs", every=1, steps_per_epoch=10), (0, 10, 20, 30, 40)),
    (dict(total_steps=45, unit="epochs", every=2, steps_per_epoch=10), (0, 20, 40, 45)),
    (dict(total_steps=1000, unit="log", every=4), (0, 1, 10, 100, 1000)),
], ids=["every_3_steps", "per_epoch", "every_2_epochs_partial", "log_spaced"])
def test_evaluation_schedules(kwargs, steps):
    sched = evaluation_schedule(**kwargs)
    assert sched.steps == steps and sched.description


def test_schedule_errors_name_the_argument():
    with pytest.raises(DiagnosticsError, match="steps_per_epoch = None is invalid"):
        evaluation_schedule(10, unit="epochs")
    with pytest.raises(DiagnosticsError, match="unit = 'hours' is invalid"):
        evaluation_schedule(10, unit="hours")


def test_q_t_counts_misaligned_evaluations_from_t0_inclusive():
    q = QTracker()
    for step, aligned, rho in [(0, False, 0.5), (1, True, 1e-12), (2, False, 1e-6), (3, False, 1e-7)]:
        q.update(step, aligned, rho)
    assert q.q_t == 3 and q.to_record() == {"q_t": 3, "q_evaluations": 4}
    assert q.q_t_at(1e-5) == 1 and q.q_t_at(1e-13) == 4  # recomputed from the logged residuals
    with pytest.raises(DiagnosticsError, match="step = 3 is invalid: must increase"):
        q.update(3, True)


@pytest.mark.parametrize("method", ["dense", "matrix_free"])
def test_tracker_delta_m_against_explicit(method):
    g = gen()
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    net = small_net(5, seed=1)
    fm = FunctionalModel(net)
    gram_0 = build_gram(fm, x, 3, 10**9)
    tracker = AlignmentTracker(x, y, "ce", method=method, hutchinson_probes=200, seed=0)
    first = tracker.evaluate(net, 0)
    assert first.extra["delta_m_fro_sq"] == 0.0 and first.extra["q_evaluations"] == 1
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    later = tracker.evaluate(net, 7)
    diff = build_gram(fm, x, 3, 10**9) - gram_0
    fro_sq = float((diff ** 2).sum())
    spec_sq = float(torch.linalg.eigvalsh(diff).abs().max()) ** 2
    assert later.step == 7 and later.extra["delta_m_ref_step"] == 0
    assert later.extra["q_t"] == tracker.q_t == int(not first.aligned) + int(not later.aligned)
    assert later.extra["delta_m_spec_sq"] == pytest.approx(spec_sq, rel=1e-6)
    if method == "dense":
        assert later.extra["delta_m_fro_sq"] == pytest.approx(fro_sq, rel=1e-12)
    else:  # Hutchinson: unbiased, with its own standard error (200 Rademacher probes, fixed seed)
        est, se = later.extra["delta_m_fro_sq"], later.extra["delta_m_fro_sq_stderr"]
        assert abs(est - fro_sq) <= 4 * se and se < 0.2 * fro_sq


# ---------------------------------------------------------------------------- the options object
def test_options_object_and_keyword_changes_give_the_same_report():
    g = gen(3)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=g)
    net = small_net(4, seed=2)
    opts = AlignmentOptions(method="matrix_free", certificate=True, krylov_max_iter=50)
    by_object = alignment_report(net, x, y, "ce", opts).to_record()
    by_keywords = alignment_report(net, x, y, "ce", method="matrix_free", certificate=True,
                                   krylov_max_iter=50).to_record()
    timing = {k for k in by_object if "seconds" in k}
    assert by_object["method"] == "matrix_free" and by_object["cert_eta"] == by_keywords["cert_eta"]
    assert {k: v for k, v in by_object.items() if k not in timing} == \
        pytest.approx({k: v for k, v in by_keywords.items() if k not in timing}, nan_ok=True)
    assert opts.replace(method="dense").method == "dense" and opts.method == "matrix_free"  # frozen


def test_options_fail_before_any_work_naming_the_field():
    with pytest.raises(DiagnosticsError, match=r"method = 'fast' is invalid: must be one of \('auto', 'dense'"):
        AlignmentOptions(method="fast")
    with pytest.raises(DiagnosticsError, match=r"tol = 0 is invalid: must be > 0"):
        alignment_report(small_net(2), torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.long),
                         "ce", tol=0)
    with pytest.raises(DiagnosticsError, match=r"budget = 5 is invalid: is not an alignment option; valid: tol, "
                                               r"memory_budget_bytes, method"):
        AlignmentTracker(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), "ce", budget=5)


def test_a_trials_options_come_from_its_diag_config():
    from eeray.config import DiagConfig, TrialConfig
    from eeray.trial_diagnostics import alignment_options

    cfg = TrialConfig(diag=DiagConfig(tol_membership=1e-6, method="dense", memory_budget_gb=0.5, delta_m=False,
                                      certificate=True), seed=7)
    assert alignment_options(cfg) == AlignmentOptions(tol=1e-6, method="dense", memory_budget_bytes=2**29,
                                                      delta_m=False, certificate=True, seed=7)
