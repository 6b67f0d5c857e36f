"""The paper's base models f̄ (docs/paper-choices.md (E1, E2, E4; B13–B17)), all with analytic activations.

Softplus ln(1 + exp(ςq))/ς with ς = 100 everywhere (Assumption 6 needs real-analytic maps; ReLU and max-pool
are not). Every model ends in fully-connected layers, so :func:`eeray.surgery.to_ee_model` finds its last
layers without help.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def softplus(beta: float) -> nn.Module:
    # threshold=20 (PyTorch's default) switches to the identity where βq > 20: |error| < e^-20/β, harmless.
    return nn.Softplus(beta=beta)


# --------------------------------------------------------------------------- FCNet (E1, E3)
class FCNet(nn.Sequential):
    """Fully-connected net: ``hidden_layers`` softplus layers of ``width`` units and a linear output.

    Paper init (§B.1): every weight ~ N(0, 1/m), m = 300, "for all layers". Bias init is unstated; the
    default keeps PyTorch's U(±1/√fan_in) (docs/paper-choices.md (B17)), with zero and N(0, 1/m) as logged variants.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_layers: int = 2, width: int = 300, beta: float = 100.0,
                 bias_init: str = "default", first_layer_std: float | None = None):
        layers: list[nn.Module] = []
        dims = [in_dim] + [width] * hidden_layers
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), softplus(beta)]
        layers.append(nn.Linear(width, out_dim))
        super().__init__(nn.Flatten(), *layers)
        self.width, self.bias_init = width, bias_init
        linears = [m for m in self if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            std = first_layer_std if (i == 0 and first_layer_std is not None) else 1 / math.sqrt(width)
            init_fc_linear(lin, std, bias_init, width)


def init_fc_linear(lin: nn.Linear, std: float, bias_init: str, width: int) -> None:
    """The paper's FC init: weights N(0, std²); bias by ``bias_init`` (default | zero | normal N(0, 1/width))."""
    with torch.no_grad():
        lin.weight.normal_(0.0, std)
        if lin.bias is None or bias_init == "default":
            return  # keep nn.Linear's own U(±1/√fan_in) bias
        if bias_init == "zero":
            lin.bias.zero_()
        elif bias_init == "normal":
            lin.bias.normal_(0.0, 1 / math.sqrt(width))
        else:
            raise ValueError(f"bias_init = {bias_init!r} is invalid: must be 'default', 'zero' or 'normal'")


# --------------------------------------------------------------------------- LeNet (E2)
LENET_FC_PER_MC = 128  # the hidden FC layer's width per unit of m_c: FC(128·m_c)


class LeNet(nn.Module):
    """The paper's five-layer LeNet variant: conv(8m_c, 5x5) → conv(8m_c, 5x5) → FC(128m_c) → FC(m_y).

    Stride 1, no padding; pooling unstated: ``pool`` ∈ {none, avg2} (docs/paper-choices.md (B14); average pooling keeps
    analyticity). PyTorch default init (He-based), as the paper.
    """

    def __init__(self, m_c: int = 1, num_outputs: int = 10, in_channels: int = 1, input_size: int = 16,
                 pool: str = "none", beta: float = 100.0):
        super().__init__()
        if pool not in ("none", "avg2"):
            raise ValueError(f"pool = {pool!r} is invalid: must be 'none' or 'avg2'")
        c, h = 8 * m_c, LENET_FC_PER_MC * m_c
        pool_layer = (lambda: nn.AvgPool2d(2)) if pool == "avg2" else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c, 5), softplus(beta), pool_layer(),
            nn.Conv2d(c, c, 5), softplus(beta), pool_layer(),
            nn.Flatten(),
        )
        self.flat_features = lenet_flat_features(m_c, input_size, pool)
        self.classifier = nn.Sequential(nn.Linear(self.flat_features, h), softplus(beta), nn.Linear(h, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, S, S) -> (B, m_y)
        return self.classifier(self.features(x))


def lenet_flat_features(m_c: int, input_size: int, pool: str) -> int:
    """Width of LeNet's flattened conv output: valid 5x5 convs (−4 each), optional 2x2 average pools."""
    side = input_size
    for _ in range(2):
        side = side - 4
        side = side // 2 if pool == "avg2" else side
    if side < 1:
        raise ValueError(f"input_size = {input_size} is too small for LeNet with pool = {pool!r}")
    return 8 * m_c * side * side


# --------------------------------------------------------------------------- pre-activation ResNet-18 (E4)
class PreActBlock(nn.Module):
    """BN → softplus → conv3x3 → BN → softplus → conv3x3, plus a 1x1 projection shortcut when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int, beta: float):
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(cin), softplus(beta)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout), softplus(beta)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 (He et al. 2016b), CIFAR stem without max-pool (docs/paper-choices.md (B13)),
    stages [2, 2, 2, 2] × {64, 128, 256, 512}, final BN + softplus, global average pool, FC 512 → m_y."""

    def __init__(self, num_outputs: int = 10, in_channels: int = 3, beta: float = 100.0, final_bn: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
            blocks.append(PreActBlock(cin, cout, stride, beta))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Sequential(nn.BatchNorm2d(512), softplus(beta)) if final_bn else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, m_y)
        x = self.final(self.blocks(self.stem(x)))  # (B, 512, H/8, W/8)
        return self.fc(self.flatten(self.pool(x)))  # (B, m_y)


# --------------------------------------------------------------------------- from config
def build_model(cfg, spec) -> nn.Module:
    """The base model f̄ for a :class:`eeray.config.ModelConfig` and a :class:`eeray.data.DatasetSpec`."""
    m_y = spec.m_y
    if cfg.arch == "fcnet":
        return FCNet(math.prod(spec.input_shape), m_y, cfg.fc_hidden_layers, cfg.fc_width, cfg.softplus_beta,
                     cfg.fc_bias_init, cfg.fc_first_layer_std)
    if cfg.arch == "lenet":
        return LeNet(cfg.lenet_mc, m_y, spec.input_shape[0], spec.input_shape[-1], cfg.lenet_pool,
                     cfg.softplus_beta)
    if cfg.arch == "preact_resnet18":
        return PreActResNet18(m_y, spec.input_shape[0], cfg.softplus_beta, cfg.resnet_final_bn)
    raise ValueError(f"model.arch = {cfg.arch!r} is invalid: must be 'fcnet', 'lenet' or 'preact_resnet18'")


def head_input_width(cfg, spec) -> int:
    """m_{H−1} (z's width including the constant neuron) without building the model: 301 for the FCNet of
    width 300, LeNet's flattened conv features + 1, 513 for ResNet-18 (paper §B.2.2)."""
    if cfg.arch == "fcnet":
        # the last two layers are replaced, so z is the input of the penultimate Linear
        return cfg.fc_width + 1 if cfg.fc_hidden_layers >= 2 else math.prod(spec.input_shape) + 1
    if cfg.arch == "lenet":
        return lenet_flat_features(cfg.lenet_mc, spec.input_shape[-1], cfg.lenet_pool) + 1
    return 512 + 1


def replaced_width(cfg) -> int | None:
    """The width of the hidden layer the EE head replaces (its default m_H, eeray.surgery.resolve_m_H) without
    building the model: FCNet's last hidden layer, LeNet's FC(128·m_c); None where only the output layer is
    replaced (ResNet-18, a one-hidden-layer FCNet)."""
    if cfg.arch == "fcnet":
        return cfg.fc_width if cfg.fc_hidden_layers >= 2 else None
    if cfg.arch == "lenet":
        return LENET_FC_PER_MC * cfg.lenet_mc
    return None
