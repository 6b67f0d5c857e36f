"""Algorithm 1: the schedule, the ε-perturbation, freezing that is bit-for-bit, and L-BFGS on cached features."""
import math

import pytest
import torch
from torch import nn

from eeray.config import EEConfig
from eeray.exploitation import FullBatchObjective, cached_features
from eeray.surgery import BODY, HEAD, HIDDEN, to_ee_model
from eeray.wrapper import EEWrapper, Phase, PhaseSchedule, perturb_, sgd, tau_step_of


def small_bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Softplus(beta=100), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 16), nn.BatchNorm1d(16), nn.Softplus(beta=100), nn.Linear(16, 3))


def test_phase_is_a_pure_function_of_the_step():
    s = PhaseSchedule(tau_step=5, total_steps=8)
    assert [s.phase_at(t) for t in range(8)] == [Phase.EXPLORE] * 5 + [Phase.EXPLOIT] * 3
    assert PhaseSchedule(None, 8).phase_at(7) == Phase.EXPLORE


@pytest.mark.parametrize("tau, unit, expected", [(0.8, "fraction", 160 * 7), (0.25, "fraction", 50 * 7),
                                                  (0.333, "fraction", 67 * 7), (12, "epochs", 12 * 7),
                                                  (33, "steps", 33), (0.0, "fraction", 0), (1.0, "fraction", 1400)])
def test_tau_lands_on_a_well_defined_step(tau, unit, expected):
    assert tau_step_of(EEConfig(tau=tau, tau_unit=unit), epochs=200, steps_per_epoch=7) == expected


def test_perturbation_statistics_and_buffers_untouched():
    torch.manual_seed(0)
    model = small_bn_net()
    model[1].running_mean.fill_(0.3)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    state = torch.get_rng_state()
    rec = perturb_(params, 1e-3, seed=11)
    assert torch.equal(torch.get_rng_state(), state)  # a dedicated generator: the global stream is untouched
    d = sum(p.numel() for p in params)
    assert rec.d == d and rec.expected_norm == pytest.approx(1e-3 * math.sqrt(d))
    assert rec.norm == pytest.approx(rec.expected_norm, rel=0.05)  # ‖εδ‖ ≈ ε√d, d = 2,470
    deltas = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)]).double() / 1e-3
    assert abs(float(deltas.mean())) < 0.06 and float(deltas.std()) == pytest.approx(1.0, abs=0.05)
    for k, v in buffers.items():
        assert torch.equal(model.state_dict()[k], v)
    again = small_bn_net()
    again.load_state_dict({k: v for k, v in zip([n for n, _ in model.named_parameters()], before)}, strict=False)
    for p, b in zip(again.parameters(), before):
        p.data.copy_(b)
    perturb_(list(again.parameters()), 1e-3, seed=11)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters()))  # seed -> same δ


def test_tiny_epsilon_survives_float32():
    p = nn.Parameter(torch.full((1000,), 100.0))
    rec = perturb_([p], 1e-5, seed=0)
    assert rec.norm > 0.5 * rec.expected_norm  # 1e-5 on 100.0 is above float32's spacing (7.6e-6): not lost


def _train(wrapper, model, x, y, steps, start=0):
    for step in range(start, start + steps):
        wrapper.before_step(step)
        wrapper.train_mode()
        loss = nn.functional.cross_entropy(model(x), y)
        wrapper.optimizer.zero_grad(set_to_none=False)  # keep grad tensors: frozen params must still not move
        loss.backward()
        wrapper.optimizer.step()


@pytest.mark.parametrize("factory", [
    sgd(lr=0.05, momentum=0.9, weight_decay=1e-2),
    lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
], ids=["sgd_momentum_wd", "adamw_wd"])
def test_frozen_parameters_bitwise_unchanged_through_exploitation(factory):
    torch.manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))
    model = to_ee_model(small_bn_net(), x[:2], m_H=5)
    wrapper = EEWrapper(model, factory, factory, PhaseSchedule(tau_step=4, total_steps=10), epsilon=1e-3)
    _train(wrapper, model, x, y, 4)
    wrapper.before_step(4)  # the switch
    frozen = {n: t.clone() for n, t in model.state_dict().items() if not n.startswith("head.hidden.")}
    hidden = [p.clone() for p in model.params_of(HIDDEN)]
    _train(wrapper, model, x, y, 6, start=4)
    after = model.state_dict()
    changed = [n for n, t in frozen.items() if not torch.equal(after[n], t)]
    assert changed == []  # body and W^(H) weights, BN running statistics, the frozen gate: all bit-for-bit
    assert all(not torch.equal(p, h) for p, h in zip(model.params_of(HIDDEN), hidden))
    state_params = set(wrapper.optimizer.state)
    assert state_params == set(model.params_of(HIDDEN))  # no optimizer state for frozen parameters
    assert all(not p.requires_grad for p in model.params_of(BODY, HEAD))


def test_backbone_mode_train_ablation_updates_bn_statistics_only():
    torch.manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))
    model = to_ee_model(small_bn_net(), x[:2], m_H=5)
    wrapper = EEWrapper(model, sgd(0.05), sgd(0.05), PhaseSchedule(0, 3), backbone_mode="train")
    wrapper.before_step(0)
    mean = model.body[1].running_mean.clone()
    weight = model.body[0].weight.clone()
    _train(wrapper, model, x, y, 2)
    assert not torch.equal(model.body[1].running_mean, mean) and torch.equal(model.body[0].weight, weight)


def test_carrying_optimizer_state_across_the_switch():
    torch.manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))
    model = to_ee_model(small_bn_net(), x[:2], m_H=5)
    factory = sgd(0.05, momentum=0.9)
    wrapper = EEWrapper(model, factory, factory, PhaseSchedule(2, 4), reset_optimizer_state=False)
    _train(wrapper, model, x, y, 2)
    buf = wrapper.optimizer.state[model.head.hidden.weight]["momentum_buffer"].clone()
    wrapper.before_step(2)
    assert torch.equal(wrapper.optimizer.state[model.head.hidden.weight]["momentum_buffer"], buf)
    assert len(wrapper.optimizer.state) == 2


def test_lbfgs_decreases_the_exploitation_loss_on_cached_features():
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    base = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softplus(beta=100), nn.Flatten(), nn.Linear(144, 16),
                         nn.Softplus(beta=100), nn.Linear(16, 3))
    model = to_ee_model(base, x[:2], m_H=8)
    wrapper = EEWrapper(model, sgd(0.05), lambda p: torch.optim.LBFGS(p, max_iter=15, line_search_fn="strong_wolfe"),
                        PhaseSchedule(0, 1))
    wrapper.before_step(0)
    z = cached_features(model, x)  # (64, 144): two FC layers replaced, z̄ = the flattened conv output
    assert z.shape == (64, 144) and not z.requires_grad
    objective = FullBatchObjective(model, z, y, "ce", weight_decay=1e-4, chunk=16)  # chunks: 4 per evaluation
    values = [objective.value()]
    for _ in range(3):
        wrapper.optimizer.step(objective.closure)
        values.append(objective.value())
    assert all(b <= a for a, b in zip(values, values[1:]))  # strong-Wolfe steps never increase L̂
    assert values[-1] < 0.1 * values[0]
    assert objective.evaluations >= 3
