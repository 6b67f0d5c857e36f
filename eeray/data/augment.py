"""The paper's augmentations (docs/paper-choices.md (E4)), per sample but batched on the batch's device.

The paper applied torchvision transforms to one PIL image at a time in a DataLoader. Here a trial keeps its
data on the GPU and augments whole batches, so each transform is re-expressed as one batched tensor op with
per-sample random parameters drawn from a ``torch.Generator`` (reproducible, checkpointable). The semantics are
those of ``torchvision.transforms.v2`` (tests compare against ``v2.functional`` one sample at a time):

- RandomCrop(size, padding=p): pad p on every side with the fill, take a size×size window at a uniform offset
  (top, left) ∈ {0..2p}²;
- RandomAffine(degrees, scale=(lo, hi)): angle ~ U(−degrees, degrees), scale ~ U(lo, hi), no translation or
  shear, rotation about the image centre, NEAREST interpolation (v2's default), out-of-image pixels = fill;
- RandomHorizontalFlip(p=0.5).

Inputs are already normalised, while the paper cropped/rotated raw images and normalised afterwards. With zero
padding and nearest sampling both ops only move pixels, so they commute with the per-channel normalisation as
long as the fill is the normalised value of black, −mean/std per channel — which is what we use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

# name -> (crop size, crop padding, affine degrees or None, affine scale range or None, horizontal flip)
_RECIPES: dict[str, tuple[int, int, float | None, tuple[float, float] | None, bool]] = {
    "mnist": (28, 2, 15.0, (0.85, 1.15), False),
    "kmnist": (28, 2, None, None, False),
    "cifar10": (32, 4, None, None, True),
    "cifar100": (32, 4, None, None, True),
    "svhn": (32, 4, None, None, True),
    "cifar_sized": (32, 4, None, None, True),  # random CIFAR-shaped images (throughput runs): CIFAR's recipe
    "semeion": (16, 1, 4.0, (1.05, 1.05), False),
    "digits16": (16, 1, 4.0, (1.05, 1.05), False),  # the offline Semeion stand-in gets Semeion's recipe
}


class NoAugmentationError(ValueError):
    """A dataset without a paper augmentation was asked for one."""


@dataclass(frozen=True)
class PaperAugmentation:
    """Callable ``(x (B, C, H, W) float, generator) -> (B, C, H, W)``; picklable (plain fields only)."""

    name: str
    size: int  # crop size = image size (the paper's crops never change the size)
    padding: int
    degrees: float | None
    scale: tuple[float, float] | None
    hflip: bool
    fill: tuple[float, ...]  # per channel: the normalised value of black

    def sample_params(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample parameters, drawn on the generator's device (usually CPU) in a fixed order."""
        dev = generator.device
        p: dict[str, torch.Tensor] = {}
        hi = 2 * self.padding + 1
        p["top"] = torch.randint(0, hi, (batch,), generator=generator, device=dev)  # (B,)
        p["left"] = torch.randint(0, hi, (batch,), generator=generator, device=dev)  # (B,)
        if self.degrees is not None:
            u = torch.rand(batch, generator=generator, device=dev, dtype=torch.float64)
            p["angle"] = (2 * u - 1) * self.degrees  # (B,) degrees, U(−d, d)
            lo, up = self.scale if self.scale is not None else (1.0, 1.0)
            u = torch.rand(batch, generator=generator, device=dev, dtype=torch.float64)
            p["scale"] = lo + (up - lo) * u  # (B,)
        if self.hflip:
            p["flip"] = torch.rand(batch, generator=generator, device=dev) < 0.5  # (B,) bool
        return p

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transforms with given parameters, in the paper's order: crop, affine, flip."""
        # few host->device copies: the integer parameters travel as one tensor, the affine matrices as another
        ints = [params["top"], params["left"]] + ([params["flip"].long()] if "flip" in params else [])
        ints = _to_device(torch.stack(ints), x.device)  # (2 or 3, B)
        fill = _fill_tensor(self.fill, x)
        x = random_crop(x, self.padding, fill, ints[0], ints[1])
        if "angle" in params:
            x = affine_nearest(x, params["angle"], params["scale"], fill)
        if "flip" in params:
            x = hflip(x, ints[2].bool())
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.size or x.shape[-2] != self.size:
            raise ValueError(f"augmentation '{self.name}' expects a batch (B, C, {self.size}, {self.size}); "
                             f"got {tuple(x.shape)}")
        return self.apply(x, self.sample_params(x.shape[0], generator))


def paper_augmentation(name: str, normalization: dict[str, Sequence[float]] | None) -> PaperAugmentation:
    """The E4 augmentation (docs/paper-choices.md) of ``name``; ``normalization`` = TrainingData.info["normalization"]
    ({"mean": [...], "std": [...]} or None for raw [0, 1] / binary inputs, whose black is 0)."""
    if name not in _RECIPES:
        raise NoAugmentationError(f"dataset '{name}' has no paper augmentation (docs/paper-choices.md (E4)); "
                                  f"valid: {', '.join(_RECIPES)}")
    size, pad, deg, scale, flip = _RECIPES[name]
    if normalization is None:
        fill: tuple[float, ...] = (0.0,)
    else:
        # computed like Normalize on a 0 pixel, in float32, so that fill == the normalised black bit for bit
        mean = torch.tensor(normalization["mean"], dtype=torch.float32)
        std = torch.tensor(normalization["std"], dtype=torch.float32)
        fill = tuple((torch.zeros_like(mean).sub_(mean).div_(std)).tolist())
    return PaperAugmentation(name, size, pad, deg, scale, flip, fill)


PIN = True  # pinned host->device copies of the parameters (benchmarks toggle it)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU parameters to the batch's device without making the host wait for the GPU: a copy from pageable
    memory can stall until the stream catches up, a pinned non_blocking copy is only queued."""
    if device.type == "cuda" and t.device.type == "cpu" and PIN:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _fill_tensor(fill: Sequence[float] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(fill, torch.Tensor) and fill.dim() == 4:
        return fill.to(x.dtype)  # already (1, C, 1, 1) on x's device
    f = _to_device(torch.tensor(list(fill), dtype=x.dtype), x.device)  # not torch.tensor(device=cuda): it syncs
    if f.numel() == 1:
        f = f.expand(x.shape[1])
    if f.numel() != x.shape[1]:
        raise ValueError(f"fill has {f.numel()} values for {x.shape[1]} channels")
    return f.view(1, -1, 1, 1)  # (1, C, 1, 1)


def random_crop(x: torch.Tensor, padding: int, fill: Sequence[float] | torch.Tensor, top: torch.Tensor,
                left: torch.Tensor) -> torch.Tensor:
    """v2.RandomCrop(H, padding) with offsets (top, left) per sample: out[b, :, i, j] = padded[b, :, top+i, left+j]."""
    b, c, h, w = x.shape
    if padding == 0:
        return x
    padded = x.new_empty(b, c, h + 2 * padding, w + 2 * padding)  # (B, C, H+2p, W+2p)
    padded.copy_(_fill_tensor(fill, x).expand_as(padded))
    padded[:, :, padding:padding + h, padding:padding + w] = x
    rows = top.view(b, 1) + torch.arange(h, device=x.device)  # (B, H)
    cols = left.view(b, 1) + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    # advanced indices around a slice: the indexed dims come first -> (B, H, W, C)
    out = padded[bi, :, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def affine_nearest(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor,
                   fill: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """v2.functional.affine(img, angle, translate=[0, 0], scale, shear=[0, 0], NEAREST, fill) per sample.

    Same construction as torchvision's tensor kernel: the inverse matrix [[cos, sin], [−sin, cos]] / scale
    (from _get_inverse_affine_matrix with centre 0, no shear/translation), applied to pixel-centred coordinates
    and divided by half the size (align_corners=False), then grid_sample(nearest, zeros) with a ones-channel
    whose sample marks the pixels that came from outside the image (those get the fill)."""
    b, c, h, w = x.shape
    dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    # matrices on the parameters' device (usually CPU, where they were drawn), in float64 like torchvision's
    # Python-float matrix, then cast; one copy to the batch's device
    rad = torch.deg2rad(angle.to(torch.float64))
    cos, sin, s = torch.cos(rad), torch.sin(rad), scale.to(torch.float64)
    theta = torch.stack([cos / s, sin / s, torch.zeros_like(s), -sin / s, cos / s, torch.zeros_like(s)], -1)
    theta = theta.view(b, 2, 3).to(dt)  # (B, 2, 3) inverse affine matrices
    r = _to_device(theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=dt), x.device)  # (B, 3, 2)
    # pixel-centred coordinates; elementwise products instead of torchvision's bmm so that a TF32 matmul
    # setting cannot perturb the sampling positions
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=x.device).to(dt).view(1, 1, w)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=x.device).to(dt).view(1, h, 1)
    gx = xs * r[:, 0, 0].view(b, 1, 1) + ys * r[:, 1, 0].view(b, 1, 1) + r[:, 2, 0].view(b, 1, 1)  # (B, H, W)
    gy = xs * r[:, 0, 1].view(b, 1, 1) + ys * r[:, 1, 1].view(b, 1, 1) + r[:, 2, 1].view(b, 1, 1)
    grid = torch.stack([gx, gy], -1)  # (B, H, W, 2)
    img = torch.cat([x.to(dt), x.new_ones(b, 1, h, w, dtype=dt)], 1)  # (B, C+1, H, W)
    out = F.grid_sample(img, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out, mask = out[:, :c], out[:, c:]
    out = torch.where(mask < 0.5, _fill_tensor(fill, out).expand_as(out), out)
    return out.to(x.dtype)


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """v2.RandomHorizontalFlip with the per-sample decision ``flip`` (B,) bool."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
