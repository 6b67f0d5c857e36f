"""CUDA checks for the core (run on the GPU machine: ``python -m pytest -m gpu tests/test_gpu.py``)."""
import pytest
import torch

from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.models import PreActResNet18
from eeray.records import MemorySink
from eeray.surgery import to_ee_model
from eeray.trial import run_trial

pytestmark = pytest.mark.gpu  # without CUDA these fail (tests/conftest.py), never skip


def test_trial_picks_cuda_and_resumes_across_the_switch():
    cfg = TrialConfig(data=DataConfig(name="digits16", n_train=256, augment=True),
                      model=ModelConfig(arch="lenet", lenet_mc=2), optim=OptimConfig(lr=0.05, momentum=0.9),
                      ee=EEConfig(m_H_factor=2.0, tau=0.5), train=TrainConfig(epochs=4, batch_size=64),
                      diag=DiagConfig(alignment=True, max_samples=64, lemma5=True, assumption4=True))
    sink = MemorySink(keep_checkpoints=("post_switch",))
    ref = run_trial(cfg, sink)
    assert ref.summary["device"].startswith("cuda")
    assert ref.summary["assumption4_certified"] and ref.summary["diag_evaluations"] == 5
    resumed = run_trial(cfg, MemorySink(), checkpoint=sink.checkpoints[0].state)
    for (name, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)  # cuDNN need not be bitwise


def test_ee_head_matches_cpu_on_cuda():
    torch.manual_seed(0)
    ee = to_ee_model(PreActResNet18(10, 3), torch.randn(2, 3, 32, 32), n=50000).double()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    ee.eval()
    cpu = ee(x)
    gpu = ee.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-9, atol=1e-9)


def test_exploitation_replays_the_frozen_body_as_cuda_graphs():
    from eeray.wrapper import EEWrapper, PhaseSchedule, sgd

    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    ee = to_ee_model(PreActResNet18(10, 3).cuda(), x[:2], n=50000)
    wrapper = EEWrapper(ee, sgd(0.1, momentum=0.9), sgd(0.1, momentum=0.9), PhaseSchedule(0, 3))
    wrapper.before_step(0)
    wrapper.train_mode()
    with torch.no_grad():
        eager = ee.body(x).flatten(1)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(ee(x), y)
        wrapper.optimizer.zero_grad()
        loss.backward()
        wrapper.optimizer.step()
    runner = ee.body_runner
    assert runner.disabled is None and len(runner.graphs) == 1
    torch.testing.assert_close(ee.features(x), eager, rtol=1e-4, atol=1e-5)  # the graph's z = the eager z
    ee.eval()
    torch.testing.assert_close(ee.features(x), eager, rtol=1e-4, atol=1e-5)  # eval runs eagerly


def test_sgd_steps_replayed_as_cuda_graphs_follow_the_eager_trajectory():
    """Whole-step graphs (eeray.graphed_step) in both phases, a full and a partial batch shape: the trained
    parameters match an eager run, and most steps were replays."""
    torch.backends.cudnn.deterministic = True
    try:
        def cfg(graphs: bool) -> TrialConfig:
            return TrialConfig(data=DataConfig(name="cifar_sized", n_train=200, n_test=64, augment=True),
                               model=ModelConfig(arch="preact_resnet18"),
                               optim=OptimConfig(lr=0.02, momentum=0.9, weight_decay=1e-5),
                               ee=EEConfig(m_H_factor=2.0, tau=5, tau_unit="epochs"),
                               train=TrainConfig(epochs=10, batch_size=64, cuda_graphs=graphs),
                               diag=DiagConfig(lemma5=False))

        graphed, eager = run_trial(cfg(True), MemorySink()), run_trial(cfg(False), MemorySink())
        status = graphed.summary["train_step_graphs"]
        assert status.startswith("on (") and "train_step_graphs" not in eager.summary
        replays = int(status.split("(")[1].split()[0])
        # per phase, 5 epochs of 3 full (64) + 1 partial (8) batches; per shape 2 eager warm-up steps and 1
        # checked capture, the rest replayed: (15 − 3) + (5 − 3) = 14
        assert replays == 2 * 14, status
        for (name, a), b in zip(graphed.model.state_dict().items(), eager.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        assert graphed.summary["final_train_loss"] == pytest.approx(eager.summary["final_train_loss"], rel=1e-4)
    finally:
        torch.backends.cudnn.deterministic = False


def test_channels_last_trials_follow_the_contiguous_trajectory():
    """train.channels_last only changes the layout: with TF32 off, an NHWC trial ends where an NCHW one does."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = True, False
    try:
        def cfg(nhwc: bool) -> TrialConfig:
            return TrialConfig(data=DataConfig(name="cifar_sized", n_train=128, n_test=64, augment=True),
                               model=ModelConfig(arch="preact_resnet18"), optim=OptimConfig(lr=0.02, momentum=0.9),
                               ee=EEConfig(m_H_factor=2.0, tau=2, tau_unit="epochs"),
                               train=TrainConfig(epochs=4, batch_size=64, channels_last=nhwc, cuda_graphs=False),
                               diag=DiagConfig(lemma5=False))

        nhwc, nchw = run_trial(cfg(True), MemorySink()), run_trial(cfg(False), MemorySink())
        assert (nhwc.summary["memory_format"], nchw.summary["memory_format"]) == ("channels_last", "contiguous")
        assert next(nhwc.model.body.parameters()).is_contiguous(memory_format=torch.channels_last)
        for (name, a), b in zip(nhwc.model.state_dict().items(), nchw.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = False, True
