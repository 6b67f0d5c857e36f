"""Model surgery: the five model kinds, eqs 16–18 exactly, continuity across the gate switch, clear errors."""
import pytest
import torch
import torchvision
from torch import nn

from eeray.models import FCNet, LeNet, PreActResNet18
from eeray.surgery import BODY, HEAD, HIDDEN, EEHead, SurgeryError, resolve_m_H, to_ee_model


class TwoFCFunctional(nn.Module):
    """A model whose activation between the last two FC layers is applied functionally in forward()."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.c(nn.functional.softplus(self.b(nn.functional.softplus(self.a(x)))))


# name: (base model factory, example input, kwargs, expected (mode, replaced, m_bar, m_y, m_H))
CASES = {
    "fcnet": (lambda: FCNet(1, 1, hidden_layers=2, width=300), (5, 1), {},
              ("two_fc", ("3", "4", "5"), 300, 1, 300)),
    "lenet_mc2": (lambda: LeNet(2, 10), (3, 1, 16, 16), {"m_H_factor": 2.0, "n": 1000},
                  ("two_fc", ("classifier.0", "classifier.1", "classifier.2"), 2 * 8 * 8 * 8, 10, 2)),
    "preact_resnet18": (lambda: PreActResNet18(10, 3), (2, 3, 32, 32), {"n": 50000},
                        ("one_fc", ("fc",), 512, 10, 195)),
    "torchvision_resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 64, 64), {"n": 60000},
                             ("one_fc", ("fc",), 512, 10, 234)),
    "sequential_mlp": (lambda: nn.Sequential(nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 3)), (4, 6), {},
                       ("two_fc", ("0", "1", "2"), 6, 3, 20)),
    "conv_no_fc": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softplus(), nn.AdaptiveAvgPool2d(2)),
                   (3, 1, 8, 8), {"num_outputs": 2, "m_H": 7}, ("no_fc", (), 16, 2, 7)),
    "two_fc_last_no_activation_module": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(18, 5),
                                                               nn.Linear(5, 4)), (2, 1, 5, 5), {},
                                         ("two_fc", ("2", "3"), 18, 4, 5)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_surgery_on_model_kinds(name):
    make, shape, kwargs, (mode, replaced, m_bar, m_y, m_H) = CASES[name]
    x = torch.randn(*shape)
    ee = to_ee_model(make(), x, **kwargs)
    info = ee.info
    assert (info.mode, info.replaced, info.m_bar, info.num_outputs, info.m_H) == (mode, replaced, m_bar, m_y, m_H)
    assert ee(x).shape == (shape[0], m_y)
    labels = ee.param_labels()
    assert {n for n, lab in labels.items() if lab == HIDDEN} == {"head.hidden.weight", "head.hidden.bias"}
    assert {n for n, lab in labels.items() if lab == HEAD} == {"head.out_weight"}
    assert all(lab == BODY for n, lab in labels.items() if n.startswith("body."))
    d_hidden = sum(p.numel() for p in ee.params_of(HIDDEN))
    assert d_hidden == m_y * m_H * (m_bar + 1)  # θ_(H−1): m_y heads of m_H × m_{H−1}, constant neuron included
    assert sum(p.numel() for p in ee.params_of(HEAD)) == m_y * m_H  # θ_(H): W^(H) ∈ R^{m_y × m_H}
    with pytest.raises(SurgeryError, match="already been through EE surgery"):
        to_ee_model(ee, x)


def test_m_H_rule_is_the_papers_ceiling():
    # Table 2: MNIST 234, CIFAR 195, Semeion 4, SVHN 286 (the ceiling; the floor would give 233/194/3/285)
    assert [resolve_m_H(None, 2.0, n, 513)[0] for n in (60000, 50000, 1000, 73257)] == [234, 195, 4, 286]
    assert resolve_m_H(None, 0.5, 1000, 513)[0] == 1
    assert resolve_m_H(17, None, None, 513) == (17, "given")


def test_head_computes_equation_18_per_output():
    torch.manual_seed(1)
    head = EEHead(in_features=5, num_outputs=3, m_H=4, gate_scale=2.5)
    z = torch.randn(7, 5, dtype=torch.float64)
    head = head.double()
    out = head(z)
    for j in range(3):
        w, w_out = head.head_weights(j)  # (m_H, m̄+1), (m_H,)
        zc = torch.cat([z, torch.ones(7, 1, dtype=z.dtype)], 1)  # z = [z̄, 1]
        q = zc @ w.T  # (7, m_H): W^(H−1,j) z
        expected = (torch.sigmoid(2.5 * q) * q) @ w_out  # W^(H)_{j*} (σ̃(qz) ∘ qz)
        torch.testing.assert_close(out[:, j], expected, rtol=1e-12, atol=1e-12)


def test_output_identical_across_the_gate_switch_and_gate_frozen_after():
    ee = to_ee_model(LeNet(1, 10), torch.randn(2, 1, 16, 16), m_H=6)
    x = torch.randn(9, 1, 16, 16)
    before = ee(x)
    ee.head.freeze_gate()
    assert torch.equal(ee(x), before)  # bitwise: same kernel on bitwise-equal weights
    z = ee.features(x)
    gate_before = ee.head.gate(z, ee.head.hidden_preact(z))
    with torch.no_grad():
        ee.head.hidden.weight.add_(0.1)
    z = ee.features(x)
    assert torch.equal(ee.head.gate(z, ee.head.hidden_preact(z)), gate_before)  # σ̃(R z) does not follow W
    assert not torch.equal(ee(x), before)  # the linear factor W z does


def test_a_frozen_gate_survives_state_dict_loading():
    """The forward reads a host-side flag (no GPU sync per step); loading a state dict must set it."""
    torch.manual_seed(0)
    ee = to_ee_model(LeNet(1, 10), torch.randn(2, 1, 16, 16), m_H=6)
    ee.head.freeze_gate()
    with torch.no_grad():
        ee.head.hidden.weight.add_(0.1)  # the gate no longer follows W
    x = torch.randn(4, 1, 16, 16)
    fresh = to_ee_model(LeNet(1, 10), torch.randn(2, 1, 16, 16), m_H=6)
    fresh.load_state_dict(ee.state_dict())
    assert torch.equal(fresh(x), ee(x))
    unfrozen = to_ee_model(LeNet(1, 10), torch.randn(2, 1, 16, 16), m_H=6)
    fresh.load_state_dict(unfrozen.state_dict())  # and back: an unfrozen state unfreezes
    assert torch.equal(fresh(x), unfrozen(x))


def test_no_fc_model_without_output_count_names_what_was_found():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softplus())
    with pytest.raises(SurgeryError, match=r"no fully-connected last layer found \(last modules run: 0 \(Conv2d\), "
                                           r"1 \(Softplus\); output \(2, 2, 3, 3\)\).*pass num_outputs=m_y"):
        to_ee_model(model, torch.randn(2, 1, 5, 5), m_H=3)


def test_functional_activation_is_detected_and_the_model_left_unchanged():
    model = TwoFCFunctional()
    x = torch.randn(3, 4)
    ref = model(x)
    with pytest.raises(SurgeryError, match=r"Pass last_layers=\('c',\)"):
        to_ee_model(model, x, m_H=3)
    assert isinstance(model.b, nn.Linear) and torch.equal(model(x), ref)
    ee = to_ee_model(model, x, m_H=3, last_layers=("c",))
    assert ee.info.mode == "one_fc" and ee.info.m_bar == 8


def test_shared_activation_between_last_layers_is_refused():
    act = nn.Softplus()
    model = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2))
    with pytest.raises(SurgeryError, match=r"runs more than once.*last_layers=\('4',\)"):
        to_ee_model(model, torch.randn(2, 3))


def test_m_H_rule_without_n_says_what_to_pass():
    with pytest.raises(SurgeryError, match=r"pass n=\.\.\. \(or m_H=\.\.\. directly\)"):
        to_ee_model(PreActResNet18(10, 3), torch.randn(2, 3, 32, 32))


def test_surgery_keeps_device_and_dtype():
    ee = to_ee_model(FCNet(2, 1, 2, 8).double(), torch.randn(3, 2, dtype=torch.float64))
    assert ee.head.hidden.weight.dtype == torch.float64 and ee.head.out_weight.dtype == torch.float64
    assert ee(torch.randn(4, 2, dtype=torch.float64)).dtype == torch.float64
