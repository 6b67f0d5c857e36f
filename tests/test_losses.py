"""eeray.losses: one set of conventions for training and for the diagnostics."""
import math

import pytest
import torch
import torch.nn.functional as F

from eeray import losses
from eeray.config import LOSSES, ConfigError, TrainConfig, TrialConfig, validate


@pytest.mark.parametrize("loss,m_y", [("bce", 1), ("ce", 3), ("mse", 3), ("mse", 1)])
def test_the_training_loss_is_the_diagnostics_loss(loss, m_y):
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(7, m_y, generator=gen, dtype=torch.float64)
    y = torch.randint(0, max(m_y, 2), (7,), generator=gen)
    big_y = losses.targets(loss, y, m_y)  # (7, m_y) float64
    assert big_y.shape == (7, m_y) and big_y.dtype == torch.float64
    per_sample = losses.per_sample_loss(loss, out, y)  # the training path, labels in
    assert per_sample.shape == (7,)
    torch.testing.assert_close(per_sample.mean(), losses.loss_value(loss, out, big_y), rtol=1e-14, atol=0)
    expected = {"bce": lambda: F.binary_cross_entropy_with_logits(out, y[:, None].double()),
                "ce": lambda: F.cross_entropy(out, y),
                "mse": lambda: ((out - big_y) ** 2).sum(1).mean()}[loss]()
    torch.testing.assert_close(losses.mean_loss(loss, out, y), expected, rtol=1e-14, atol=0)


def test_training_targets_follow_the_output_dtype():
    out = torch.zeros(2, 3, dtype=torch.float32)
    assert losses.per_sample_loss("mse", out, torch.tensor([0, 2])).tolist() == [1.0, 1.0]
    assert losses.targets("mse", torch.tensor([0, 2]), 3, torch.float32).dtype == torch.float32


def test_optimal_loss_closed_forms_take_the_loss_first():
    assert losses.optimal_loss("bce", 0.0, 1) == pytest.approx(math.log(2))
    assert losses.optimal_loss("ce", 0.0, 10) == pytest.approx(math.log(10))
    assert losses.optimal_loss("mse", 0.5, 3, y_sq_norm_per_sample=4.0) == pytest.approx(1.0)


def test_one_list_of_loss_names():
    assert set(losses.LIPSCHITZ) == set(LOSSES)
    assert losses.resolve_loss("auto", 1) == "bce" and losses.resolve_loss("auto", 10) == "ce"
    with pytest.raises(losses.LossError, match=r"loss = 'hinge' is invalid: must be 'auto' or one of"):
        losses.resolve_loss("hinge", 2)
    with pytest.raises(ConfigError, match=r"'train.loss' = 'hinge' is invalid: must be one of 'auto', 'bce'"):
        validate(TrialConfig(train=TrainConfig(loss="hinge")))


def test_loss_errors_pickle_with_their_fields():
    import pickle

    err = pickle.loads(pickle.dumps(losses.TargetEncodingError("y", 3, "labels in {0, 1}")))
    assert isinstance(err, losses.LossError) and (err.field, err.value) == ("y", 3)
    assert str(err) == "y = 3 is invalid: labels in {0, 1}"
