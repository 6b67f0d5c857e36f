"""The dataset registry: what eeray can load, with the sizes the config and the validation need.

Torch-free on purpose: :mod:`eeray.config` and the study validation read it before anything heavy is imported.
Loading is :func:`eeray.data.load_dataset`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    n_train: int  # the paper's training-set size n
    n_test: int
    input_shape: tuple[int, ...]  # one sample, channels first for images
    num_classes: int  # 2 for binary tasks
    loader: str  # "module:function" returning TrainingData
    kind: str = "synthetic"  # synthetic | bundled | real (files under the data root)
    augmentable: bool = False  # has a paper augmentation (docs/paper-choices.md (E4))
    description: str = ""

    @property
    def m_y(self) -> int:
        """Output dimension: 1 for binary tasks (BCE-with-logits, docs/paper-choices.md (B15)), else the class count."""
        return 1 if self.num_classes == 2 else self.num_classes


def _real(name: str, n_train: int, n_test: int, shape: tuple[int, ...], classes: int, desc: str,
          augmentable: bool = True) -> DatasetSpec:
    return DatasetSpec(name, n_train, n_test, shape, classes, f"eeray.data.real:load_{name}", "real",
                       augmentable, desc)


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("sine", 100, 100, (1,), 2, "eeray.data.synthetic:load_sine",
                    description="x ~ U[-1, 1], y = 1{sin(20x) < 0} (paper §2.2)"),
        DatasetSpec("moons", 100, 100, (2,), 2, "eeray.data.synthetic:load_moons",
                    description="sklearn make_moons (paper §2.2)"),
        DatasetSpec("random16", 1000, 1000, (1, 16, 16), 2, "eeray.data.synthetic:load_random16",
                    description="pixels ~ N(0, 1), y ~ U{0, 1} (paper §2.2)"),
        DatasetSpec("cifar_sized", 50000, 10000, (3, 32, 32), 10, "eeray.data.synthetic:load_cifar_sized",
                    augmentable=True,  # CIFAR-10's recipe
                    description="N(0, 1) images with CIFAR-10's shape and random labels: throughput runs only"),
        DatasetSpec("digits", 1000, 797, (1, 8, 8), 10, "eeray.data.synthetic:load_digits", "bundled",
                    description="scikit-learn's 1797 real 8x8 handwritten digits, seeded 1000/797 split"),
        DatasetSpec("digits16", 1000, 797, (1, 16, 16), 10, "eeray.data.synthetic:load_digits16", "bundled",
                    augmentable=True,  # Semeion's recipe
                    description="the digits at 16x16: an offline Semeion stand-in (docs/paper-choices.md (C22))"),
        _real("mnist", 60000, 10000, (1, 28, 28), 10, "MNIST (LeCun 1998)"),
        _real("kmnist", 60000, 10000, (1, 28, 28), 10, "Kuzushiji-MNIST (Clanuwat 2019)"),
        _real("fashion_mnist", 60000, 10000, (1, 28, 28), 10, "Fashion-MNIST (Debian dataset-fashion-mnist)",
              augmentable=False),
        _real("cifar10", 50000, 10000, (3, 32, 32), 10, "CIFAR-10"),
        _real("cifar100", 50000, 10000, (3, 32, 32), 100, "CIFAR-100"),
        _real("svhn", 73257, 26032, (3, 32, 32), 10, "SVHN train split (no 'extra')"),
        _real("semeion", 1000, 593, (1, 16, 16), 10, "Semeion, fixed seeded 1000/593 split (UCI semeion.data)"),
    ]
}
