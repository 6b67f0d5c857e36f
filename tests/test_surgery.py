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


# --------------------------------------------------------------------------- refusals leave the model as it was
def _snapshot(model: nn.Module) -> dict:
    """Everything a refusal could change: the module tree (names, the module objects, their types and train flags),
    the parameter objects, every state_dict tensor (cloned), and the forward hooks."""
    return {"modules": [(n, id(m), type(m).__name__, m.training) for n, m in model.named_modules()],
            "params": [(n, id(p)) for n, p in model.named_parameters()],
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "hooks": [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()],
            "attrs": sorted(model.__dict__)}


def _assert_unchanged(model: nn.Module, before: dict, x: torch.Tensor, out_before: torch.Tensor) -> None:
    after = _snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["params"] == before["params"]
    assert after["hooks"] == before["hooks"] and after["attrs"] == before["attrs"]
    assert list(after["state"]) == list(before["state"])
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    was = [m.training for m in model.modules()]
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), out_before)
    for m, t in zip(model.modules(), was):
        m.training = t


def _refuse(model: nn.Module, x: torch.Tensor, match: str, probe: torch.Tensor | None = None, **kwargs) -> str:
    """Surgery on example ``x`` is refused with a message matching ``match``; the model is exactly as before (and
    computes the same on ``probe``, default ``x``). Returns the message."""
    probe = x if probe is None else probe
    before = _snapshot(model)
    was = [m.training for m in model.modules()]
    model.eval()
    with torch.no_grad():
        out_before = model(probe)
    for m, t in zip(model.modules(), was):
        m.training = t
    with pytest.raises(SurgeryError, match=match) as info:
        to_ee_model(model, x, **kwargs)
    _assert_unchanged(model, before, probe, out_before)
    return str(info.value)


class ReadsOutFeatures(nn.Module):
    """The forward reads the last layer's size after calling it: fine for the model, a raw AttributeError once the
    layer is an Identity (the verification's second forward)."""

    def __init__(self, two: bool):
        super().__init__()
        self.two = two
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x)) if self.two else x @ torch.ones(6, 12)
        return self.fc2(h).view(-1, self.fc2.out_features)


class VGGStyle(nn.Module):
    """VGG's layout at toy size: conv features, then Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(4 * 4 * 4, 32), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class TiedLast(nn.Module):
    """The last Linear runs twice (weight tying): neither it nor the pair before it can be replaced."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc = nn.Linear(5, 5), nn.Linear(5, 5)

    def forward(self, x):
        return self.fc(torch.tanh(self.fc(self.fc1(x))))


def test_readme_resnet18_without_n_is_refused_unchanged_and_the_hint_works():
    torch.manual_seed(0)
    model, x = torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 64, 64)
    msg = _refuse(model, x, r"pass n=\.\.\.")
    assert "already been through" not in msg
    ee = to_ee_model(model, x, n=60000)  # the hint, followed: the README's call
    assert (ee.info.mode, ee.info.replaced, ee.info.m_H) == ("one_fc", ("fc",), 234)


@pytest.mark.parametrize("kwargs, match", [({"m_H": 0}, "m_H = 0 is invalid"),
                                           ({"m_H_factor": -1.0, "n": 100}, "m_H_factor = -1.0 is invalid"),
                                           ({"num_outputs": 0}, "num_outputs = 0 is invalid")])
def test_mobilenet_head_with_dropout_refusals_leave_it_unchanged(kwargs, match):
    torch.manual_seed(0)
    model, x = torchvision.models.mobilenet_v3_small(num_classes=7), torch.randn(2, 3, 32, 32)
    model.features[0].eval()  # a submodule kept in eval mode while the root trains: must stay so
    _refuse(model, x, match, **kwargs)
    assert model.training and not model.features[0].training


def test_mobilenet_classifier_with_activation_and_dropout_is_two_fc():
    model = torchvision.models.mobilenet_v3_small(num_classes=7)
    model.features[0].eval()
    x = torch.randn(2, 3, 32, 32)
    ee = to_ee_model(model, x, m_H_factor=2.0, n=600)
    assert ee.info.mode == "two_fc" and ee.info.replaced == ("classifier.0", "classifier.1", "classifier.2",
                                                             "classifier.3")
    assert (ee.info.m_bar, ee.info.num_outputs, ee.info.m_H) == (576, 7, 3)  # ⌈2·600/577⌉
    assert ee(x).shape == (2, 7) and not model.features[0].training  # the trace kept the eval submodule in eval


def test_vgg_style_head_refused_without_n_then_built():
    torch.manual_seed(0)
    model, x = VGGStyle(), torch.randn(3, 3, 8, 8)
    _refuse(model, x, r"pass n=\.\.\.", m_H_factor=1.0)
    ee = to_ee_model(model, x, m_H_factor=1.0, n=330)
    assert ee.info.replaced == tuple(f"classifier.{i}" for i in range(3, 7)) and ee.info.m_H == 10  # ⌈330/33⌉


def test_functional_activation_refusal_is_exact_and_its_hint_works():
    torch.manual_seed(0)
    model, x = TwoFCFunctional(), torch.randn(3, 4)
    msg = _refuse(model, x, r"Pass last_layers=\('c',\)", m_H=3)
    assert "left unchanged" in msg
    assert to_ee_model(model, x, m_H=3, last_layers=("c",)).info.mode == "one_fc"


def test_a_forward_that_raises_while_verifying_is_a_surgery_error_and_changes_nothing():
    torch.manual_seed(0)
    model, x = ReadsOutFeatures(two=False), torch.randn(3, 6)
    msg = _refuse(model, x, r"forward\(\) raised AttributeError.*last_layers=\(\) and num_outputs=4", m_H=2)
    assert "last_layers=('fc2',)" not in msg  # the hint is not the argument the search already tried
    ee = to_ee_model(model, x, m_H=2, last_layers=(), num_outputs=4)  # followed: works
    assert ee.info.mode == "no_fc" and ee(x).shape == (3, 4)


def test_following_every_hint_ends_in_success_with_each_message_new():
    """Two FC layers whose forward reads fc2's size: the search's hint (only the last layer) fails again, now with a
    different, more specific hint (add FC layers on the output), which works."""
    torch.manual_seed(0)
    model, x = ReadsOutFeatures(two=True), torch.randn(3, 6)
    first = _refuse(model, x, r"raised AttributeError.*Pass last_layers=\('fc2',\)", m_H=2)
    second = _refuse(model, x, r"raised AttributeError.*last_layers=\(\) and num_outputs=4", m_H=2,
                     last_layers=("fc2",))
    assert first != second and "last_layers=('fc2',)" not in second
    assert to_ee_model(model, x, m_H=2, last_layers=(), num_outputs=4).info.mode == "no_fc"


def test_shared_activation_refusal_is_exact_and_its_hint_works():
    act = nn.Softplus()
    model, x = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2)), torch.randn(2, 3)
    _refuse(model, x, r"runs more than once.*last_layers=\('4',\)")
    ee = to_ee_model(model, x, last_layers=("4",), m_H=3)
    assert ee.info.replaced == ("4",)


def test_a_last_layer_that_runs_twice_gets_a_hint_other_than_itself():
    model, x = TiedLast(), torch.randn(2, 5)
    first = _refuse(model, x, r"last layer 'fc' runs more than once.*last_layers=\(\) and num_outputs=5", m_H=2)
    second = _refuse(model, x, r"last layer 'fc' runs more than once.*last_layers=\(\) and num_outputs=5", m_H=2,
                     last_layers=("fc",))
    assert "last_layers=('fc',)" not in first + second
    assert to_ee_model(model, x, m_H=2, last_layers=(), num_outputs=5).info.mode == "no_fc"


def test_no_fc_hint_without_num_outputs_then_with_it():
    model, x = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softplus()), torch.randn(2, 1, 5, 5)
    msg = _refuse(model, x, r"pass num_outputs=m_y$", m_H=3, last_layers=())  # asked for: no other suggestion
    assert "last_layers" not in msg.split("pass", 1)[1]
    assert to_ee_model(model, x, m_H=3, last_layers=(), num_outputs=2).info.mode == "no_fc"


def test_an_example_the_model_rejects_is_a_surgery_error_naming_the_shape():
    model = LeNet(1, 10)
    _refuse(model, torch.randn(2, 1, 16, 16)[:, :, :5], probe=torch.randn(2, 1, 16, 16),
            match=r"forward\(\) failed on the example batch of shape \(2, 1, 5, 16\).*x_train\[:2\]", m_H=2)
    assert to_ee_model(model, torch.randn(2, 1, 16, 16), m_H=2).info.mode == "two_fc"


def test_unknown_last_layers_refused_unchanged():
    model, x = VGGStyle(), torch.randn(2, 3, 8, 8)
    _refuse(model, x, r"last_layers=\('nope',\) is invalid.*classifier\.0", last_layers=("nope",))
    _refuse(model, x, r"'features.0', a Conv2d; it must be nn.Linear", last_layers=("features.0",))
