"""Jacobians and the Gram M = JJᵀ: autograd vs finite differences, the chunked builder vs explicit JJᵀ vs
NTK-vector products, the Linear-layer factorisation vs plain contraction, eval-mode handling, bad input."""
import numpy as np
import pytest
import torch
from torch import nn

from eeray.diagnostics import MemoryBudgetError, NonFiniteOutputError, TargetEncodingError, alignment_report
from eeray.diagnostics.errors import DiagnosticsError
from eeray.diagnostics.gram import build_gram, plan_gram
from eeray.diagnostics.jacobian import FunctionalModel, eval_mode
from eeray.losses import LossError, modified_targets
from eeray.diagnostics.matrix_free import gram_operator, local_products
from eeray.surgery import to_ee_model


def conv_bn_net(m_y=3):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Softplus(beta=5.0), nn.Flatten(), nn.Linear(3 * 4 * 4, 7),
                        nn.Softplus(), nn.BatchNorm1d(7), nn.Linear(7, m_y)).double()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN differs from train mode
        net[5].running_mean.uniform_(-0.5, 0.5)
        net[5].running_var.uniform_(0.5, 2.0)
    return net


def explicit_jacobian(net, x):
    """(n·m_y, d) sample-major, one autograd.grad per output (the naive reference)."""
    rows = []
    with eval_mode(net):
        for i in range(x.shape[0]):
            out = net(x[i:i + 1])[0]
            for j in range(out.shape[0]):
                g = torch.autograd.grad(out[j], list(net.parameters()), retain_graph=True)
                rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


X = torch.randn(9, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_autograd_jacobian_matches_central_finite_differences():
    net = conv_bn_net()
    jac = explicit_jacobian(net, X[:3])  # (9, d)
    fm = FunctionalModel(net)
    theta = fm.flatten(fm.theta()).clone()
    h = 1e-6
    rng = np.random.default_rng(0)
    for k in rng.choice(fm.d, size=25, replace=False):
        plus, minus = theta.clone(), theta.clone()
        plus[k] += h
        minus[k] -= h
        with eval_mode(net):
            f_plus = fm._call(fm.state(fm.unflatten(plus)), X[:3]).reshape(-1)
            f_minus = fm._call(fm.state(fm.unflatten(minus)), X[:3]).reshape(-1)
        torch.testing.assert_close(jac[:, k], (f_plus - f_minus) / (2 * h), rtol=1e-6, atol=1e-8)


def smallest_gram_budget(fm, x, m_y):
    with pytest.raises(MemoryBudgetError) as err:
        plan_gram(fm, x, m_y, 1)
    return err.value.needed_bytes


@pytest.mark.parametrize("scale", [None, 1.0, 1.5], ids=["one_chunk", "smallest_budget", "small_budget"])
def test_chunked_gram_equals_explicit_jjt_and_ntk_vector_products(scale):
    net = conv_bn_net()
    fm = FunctionalModel(net)
    budget = 10**9 if scale is None else int(scale * smallest_gram_budget(fm, X, 3))
    plan = plan_gram(fm, X, 3, budget)
    gram = build_gram(fm, X, 3, budget, plan=plan)
    jac = explicit_jacobian(net, X)
    torch.testing.assert_close(gram, jac @ jac.T, rtol=1e-12, atol=1e-12)
    assert torch.equal(gram, gram.T)
    # NTK-vector products M·e_k = J(Jᵀe_k) (no Jacobian formed) give the same columns
    op = gram_operator(local_products(fm, X, 3, batch_size=4))
    eye = np.eye(gram.shape[0])
    cols = np.stack([op.matvec(eye[:, k]) for k in range(gram.shape[0])], 1)
    np.testing.assert_allclose(cols, gram.numpy(), rtol=1e-11, atol=1e-11)
    if scale == 1.0:  # the smallest budget really chunks samples, parameters and vmap
        assert (plan.sample_chunk, plan.vmap_chunk, len(plan.blocks)) == (1, 1, 2)
    if scale is None:
        assert (plan.sample_chunk, len(plan.blocks)) == (9, 1)
    assert [m for m, _, _ in plan.factorised] == ["3", "6"]  # both Linear layers use the exact factorisation


@pytest.mark.parametrize("rows", [4, 27, 1000], ids=["row_blocks", "one_block_exactly", "one_block"])
def test_upper_triangle_contraction_in_row_blocks_equals_explicit_jjt(monkeypatch, rows):
    """The contraction adds only the upper block triangle of JJᵀ (row blocks of TRIANGLE_ROWS; N = 27 here, so
    4 gives seven blocks, the last one short) and M is mirrored from it: every entry still equals the explicit
    product, and M is exactly symmetric."""
    from eeray.diagnostics import gram as gram_module

    monkeypatch.setattr(gram_module, "TRIANGLE_ROWS", rows)
    net = conv_bn_net()
    gram = build_gram(FunctionalModel(net), X, 3, 10**9)
    jac = explicit_jacobian(net, X)
    torch.testing.assert_close(gram, jac @ jac.T, rtol=1e-12, atol=1e-12)
    assert torch.equal(gram, gram.T)


def test_cross_block_equals_slice_of_full_gram():
    net = conv_bn_net()
    fm = FunctionalModel(net)
    full = build_gram(fm, X, 3, 10**9)
    cross = build_gram(fm, X[:4], 3, 10**9, x_cols=X[4:])
    torch.testing.assert_close(cross, full[:12, 12:], rtol=1e-12, atol=1e-12)


def test_gram_restricted_to_named_parameters():
    net = conv_bn_net()
    names = ["0.weight", "6.bias"]
    fm = FunctionalModel(net, names)
    jac = explicit_jacobian(net, X)  # columns in net.parameters() order: 0.weight first, 6.bias last
    sub = torch.cat([jac[:, :27], jac[:, -3:]], 1)
    assert fm.d == 30
    torch.testing.assert_close(build_gram(fm, X, 3, 10**9), sub @ sub.T, rtol=1e-12, atol=1e-12)


def test_ee_model_factorised_head_equals_plain_contraction():
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(4, 6), nn.Softplus(), nn.Linear(6, 5), nn.Softplus(), nn.Linear(5, 2)).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    model = to_ee_model(base, x, m_H=3, gate_scale=2.0)
    fm = FunctionalModel(model)
    plan = plan_gram(fm, x, 2, 10**9)
    assert ("head.hidden", "head.hidden.weight", "head.hidden.bias") in plan.factorised
    jac = explicit_jacobian(model, x)
    torch.testing.assert_close(build_gram(fm, x, 2, 10**9, plan=plan), jac @ jac.T, rtol=1e-12, atol=1e-12)
    model.head.freeze_gate()  # after the switch the gate is a constant of θ: the factorisation must still hold
    with torch.no_grad():
        model.head.hidden.weight.add_(0.3)
    jac = explicit_jacobian(model, x)
    torch.testing.assert_close(build_gram(fm, x, 2, 10**9), jac @ jac.T, rtol=1e-12, atol=1e-12)


def test_dense_report_records_the_ntk_vector_product_cross_check():
    y = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(0))
    assert alignment_report(conv_bn_net(), X, y, "ce").ntk_check < 1e-13  # float64 model: M and J(Jᵀz) agree


def test_model_modes_are_restored_per_module():
    net = conv_bn_net()
    net.train()
    net[5].eval()  # a caller's mixed setting must survive
    y = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(0))
    alignment_report(net, X, y, "ce")
    assert net.training and not net[5].training and net[0].training


# ---------------------------------------------------------------------------- bad input
def test_shape_mismatch_names_y():
    with pytest.raises(DiagnosticsError, match=r"y.shape = \(8,\) is invalid: must start with n = 9"):
        alignment_report(conv_bn_net(), X, torch.zeros(8, dtype=torch.long), "ce")


@pytest.mark.parametrize("y,loss,m_y,match", [
    (torch.tensor([0, 1, 2]), "bce", 1, r"y = 2 is invalid: loss 'bce' needs labels in \{0, 1\}"),
    (torch.tensor([0, 1, 3]), "ce", 3, r"y = 3 is invalid: class labels must lie in \[0, 2\]"),
    (torch.tensor([0.0, 1.0, 1.0]), "ce", 3, r"y.dtype = torch.float32 is invalid: loss 'ce' needs integer"),
    (torch.tensor([0, 1, 1]), "bce", 2, r"m_y = 2 is invalid: loss 'bce' needs a model with one output"),
    (torch.zeros(3, 2), "mse", 3, r"y.shape = \(3, 2\) is invalid: mse targets must be \(n,\) or \(n, 3\)"),
    (torch.tensor([0, 1]), "hinge", 2, r"loss = 'hinge' is invalid: must be one of"),
], ids=["bce_label_2", "ce_label_out_of_range", "ce_float_labels", "bce_two_outputs", "mse_wrong_width", "bad_loss"])
def test_target_encodings_that_do_not_fit_the_loss(y, loss, m_y, match):
    with pytest.raises(LossError, match=match):
        modified_targets(loss, y, m_y)


def test_y_ell_encodings_exact():
    assert modified_targets("bce", torch.tensor([0, 1, 1]), 1).tolist() == [[-1.0], [1.0], [1.0]]
    assert modified_targets("ce", torch.tensor([2, 0]), 3).tolist() == [[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]]
    assert modified_targets("mse", torch.tensor([2, 0]), 3).tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert modified_targets("mse", torch.tensor([0.5, -2.0]), 1).tolist() == [[0.5], [-2.0]]


def test_nan_outputs_raise():
    net = conv_bn_net()
    with torch.no_grad():
        net[6].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteOutputError, match="model\\(x\\) = 'NaN/inf at sample 0' is invalid"):
        alignment_report(net, X, torch.zeros(9, dtype=torch.long), "ce")


def test_too_small_budget_states_the_needed_budget():
    net = conv_bn_net()
    y = torch.zeros(9, dtype=torch.long)
    with pytest.raises(MemoryBudgetError) as err:
        alignment_report(net, X, y, "ce", memory_budget_bytes=5_000)
    needed = err.value.needed_bytes
    assert f"memory_budget_bytes to >= {needed}" in str(err.value)
    alignment_report(net, X, y, "ce", memory_budget_bytes=needed)  # the stated budget is enough
    with pytest.raises(MemoryBudgetError, match="the dense report") as err:
        alignment_report(net, X, y, "ce", memory_budget_bytes=20_000, method="dense")
    assert err.value.needed_bytes == 7 * 27 * 27 * 8  # the eigendecomposition bound dominates for N = 27


def test_unknown_parameter_names_are_listed():
    with pytest.raises(DiagnosticsError, match=r"params = \['nope'\] is invalid: unknown parameter names; valid: 0.w"):
        FunctionalModel(conv_bn_net(), ["nope"])


def test_target_encoding_error_is_a_value_error():
    assert issubclass(TargetEncodingError, ValueError) and issubclass(MemoryBudgetError, ValueError)
