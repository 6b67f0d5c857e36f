"""The one training loop: ``run_trial(config, sink, checkpoint=None)``.

A trial is a function of its config (docs/architecture.md principle 1): no Ray import, runs in a test, a notebook,
on a GPU box and under Tune. Data order is a pure function of (seed, epoch), augmentation randomness of
(seed, step), and everything else random (init, dropout) comes from the global generator, whose state is in
the checkpoint — so a run resumed from any checkpoint ends bitwise equal (CPU) to an uninterrupted one.

The switch is the schedule's: each step the loop calls ``EEWrapper.before_step``, which switches when
``PhaseSchedule.phase_at`` first says exploit. Branching (:mod:`eeray.branching`): a trunk offers its state at
given branch steps, and a branch of another config continues from such a state — bitwise its run from scratch.
"""
from __future__ import annotations

import copy
import math
import platform
import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from eeray import branching, cpu_kernels, losses
from eeray.config import TrialConfig, from_flat, to_flat, validate
from eeray.data import TrainingData, load_dataset
from eeray.exploitation import FrozenFeatures, FullBatchObjective, cached_features
from eeray.graphed_step import GraphedTrainStep
from eeray.models import build_model, init_fc_linear
from eeray.records import NullSink, Sink
from eeray.surgery import HIDDEN, EEModel, to_ee_model
from eeray.trial_diagnostics import TrialDiagnostics
from eeray.wrapper import PhaseSchedule, perturb_seed_of, wrapper_from_config

CHECKPOINT_FORMAT = 1


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message gives the step and the learning rate."""


@dataclass
class TrialResult:
    summary: dict[str, Any]
    model: nn.Module
    data: TrainingData


def run_trial(config: TrialConfig, sink: Sink | None = None, checkpoint: dict | None = None, *,
              branch_points: Iterable[int] = (), branch_from: dict | None = None) -> TrialResult:
    """Train one trial end to end. ``checkpoint``: a state this config offered earlier to ``sink.checkpoint``.

    Branching (:mod:`eeray.branching`): ``branch_points`` are steps at which this trial, as a trunk, offers its
    state with reason ``"branch_point"`` (without switching); ``branch_from`` is such a state offered by another
    config's trunk, from which this config continues as a branch — bitwise as if it had run from scratch,
    because every field read before that step is equal (checked)."""
    validate(config)
    cpu_kernels.apply()  # before this process's first kernel, if it is the first (eeray.cpu_kernels)
    if checkpoint is not None and branch_from is not None:
        raise ValueError("run_trial takes a checkpoint (resume) or branch_from (a branch), not both")
    trial = Trial(config, sink or NullSink(), branch_points=branch_points)
    if checkpoint is not None:
        trial.load_state_dict(checkpoint)
    if branch_from is not None:
        trial.load_branch_state(branch_from)
    return trial.run()


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("config field 'train.device' = 'cuda' is invalid: no CUDA device is visible; use 'auto' "
                         "or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trial:
    def __init__(self, config: TrialConfig, sink: Sink, branch_points: Iterable[int] = ()):
        self.cfg, self.sink = config, sink
        t0 = time.perf_counter()
        self.device = pick_device(config.train.device)
        self.data = load_dataset(config.data).to(self.device)
        spec = self.data.spec
        self.loss = losses.resolve_loss(config.train.loss, spec.m_y)
        self.steps_per_epoch = math.ceil(self.data.n / config.train.batch_size)  # drop_last=False
        torch.manual_seed(config.seed)  # initialisation
        self.model = self._build_model()
        # NHWC on CUDA: the same precision (PyTorch's default TF32 convolutions), faster cuDNN kernels
        # (benchmarks/results/step_variants_gpu.md)
        self._nhwc = config.train.channels_last and self.device.type == "cuda" and self.data.x_train.dim() == 4
        if self._nhwc:
            self.model.to(memory_format=torch.channels_last)
        self.schedule = PhaseSchedule.from_config(config.ee, config.train.epochs, self.steps_per_epoch)
        self.wrapper = wrapper_from_config(config, self.model, self.schedule, self.data.x_train, self.loss)
        self.diag = TrialDiagnostics(config, self.model, self.data.x_train, self.data.y_train, self.loss,
                                     self.schedule.total_steps, self.steps_per_epoch, sink)
        self.d = sum(p.numel() for p in self.model.parameters())
        self.step = 0
        self.timers = {"explore_seconds": 0.0, "exploit_seconds": 0.0, "eval_seconds": 0.0,
                       "setup_seconds": time.perf_counter() - t0}
        self._batch_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._batch_count = 0
        self._perm_epoch, self._perm = -1, None
        self._objective: FullBatchObjective | None = None
        # every optimizer step but L-BFGS's; on CUDA replayed as CUDA graphs (eeray.graphed_step): same arithmetic,
        # far fewer kernel launches
        self._stepper = GraphedTrainStep(self.model, self._mean_loss, enabled=config.train.cuda_graphs)
        # exploiting with the backbone frozen: steps on cached features z̄ through the head alone
        self._frozen: FrozenFeatures | None = None
        self._head_stepper = (GraphedTrainStep(self.model.head, self._mean_loss, enabled=config.train.cuda_graphs)
                              if isinstance(self.model, EEModel) else None)
        self.last_eval: dict[str, Any] = {}
        self.resumed = False
        self._mid_step = False  # resumed from a branch point: the update that reached self.step is done, the
        # evaluation / diagnostics / checkpoint that follow it are not
        self.branch_points = branching.check_branch_points(config, branch_points, self.steps_per_epoch)

    # ----------------------------------------------------------------------- setup
    def _build_model(self) -> nn.Module:
        cfg, spec = self.cfg, self.data.spec
        base = build_model(cfg.model, spec).to(self.device)
        if not cfg.ee.enabled:
            return base
        n_rule = int(self.data.info.get("n_before_split", self.data.n))  # full-set n (docs/paper-choices.md (A11))
        ee = to_ee_model(base, self.data.x_train[:2], m_H=cfg.ee.m_H, m_H_factor=cfg.ee.m_H_factor, n=n_rule,
                         gate_scale=cfg.ee.gate_scale, output_bias=cfg.ee.output_bias)
        if cfg.model.arch == "fcnet":  # the paper's N(0, 1/m) init covers "all layers" of the modified FC net
            std = 1 / math.sqrt(cfg.model.fc_width)
            init_fc_linear(ee.head.hidden, std, cfg.model.fc_bias_init, cfg.model.fc_width)
            with torch.no_grad():
                ee.head.out_weight.normal_(0.0, std)
        return ee

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def _fullbatch_lbfgs(self) -> bool:
        g = self.cfg.ee.exploit_optim or self.cfg.optim
        return self.wrapper.switched and g.name == "lbfgs" and g.lbfgs_mode == "fullbatch"

    # ----------------------------------------------------------------------- loop
    def run(self) -> TrialResult:
        total = self.schedule.total_steps
        if self._mid_step:  # a branch point is taken between an update and what follows it
            self._after_update(self.step - 1)
        elif not self.resumed:
            self._evaluate()
            self.diag.at_start(self.step, self.wrapper.phase.value)
        while self.step < total:
            # the switch is the schedule's decision (PhaseSchedule.phase_at, through EEWrapper.before_step)
            if self.wrapper.switch_due(self.step):
                self._checkpoint("pre_switch")
            perturbation = self.wrapper.before_step(self.step)
            if perturbation is not None:
                self._after_switch(perturbation)
            prev = self.step
            if self._fullbatch_lbfgs():
                self._timed(self._lbfgs_epoch)
                self.step += self.steps_per_epoch - self.step % self.steps_per_epoch  # to the next epoch end
            else:
                self._timed(self._train_step)
                self.step += 1
            if self.step in self.branch_points:
                self._offer_branch_point()
            self._after_update(prev)
        return self._finish()

    def _after_update(self, prev: int) -> None:
        """What follows the update that took the trial from step ``prev`` to ``self.step``."""
        if self._due(prev, self.step) or self.step == self.schedule.total_steps or self.step == self.schedule.tau_step:
            self._evaluate()
        self.diag.after_step(self.step, self.wrapper.phase.value)
        if self.step % self.steps_per_epoch == 0 and self.epoch % self.cfg.train.checkpoint_every_epochs == 0:
            self._checkpoint("epoch")

    def _due(self, prev: int, step: int) -> bool:
        every = self.cfg.train.eval_every * (self.steps_per_epoch if self.cfg.train.eval_unit == "epochs" else 1)
        return prev // every != step // every

    def _timed(self, fn) -> None:
        key = f"{self.schedule.phase_at(self.step).value}_seconds"
        t0 = time.perf_counter()
        fn()
        if self.device.type == "cuda" and self.step % self.steps_per_epoch == self.steps_per_epoch - 1:
            torch.cuda.synchronize()  # once per epoch, so per-phase wall time is honest without per-step syncs
        self.timers[key] += time.perf_counter() - t0

    def _batch_indices(self) -> torch.Tensor:
        epoch, b, bs = self.epoch, self.step % self.steps_per_epoch, self.cfg.train.batch_size
        if epoch != self._perm_epoch:  # data order: a pure function of (seed, epoch)
            g = torch.Generator().manual_seed(1_000_003 * self.cfg.seed + 7919 * epoch + 1)
            self._perm, self._perm_epoch = torch.randperm(self.data.n, generator=g).to(self.device), epoch
        return self._perm[b * bs:(b + 1) * bs]

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._batch_indices()
        xb, yb = self.data.x_train[idx], self.data.y_train[idx]
        if self.data.augment is not None:
            xb = self.data.augment(xb, torch.Generator().manual_seed(2_000_003 * self.cfg.seed + self.step))
        return self._layout(xb), yb

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self._nhwc else x

    def _skip_update(self) -> bool:
        """perturb_base='tau_minus_1': θ^τ = θ^{τ−1} + εδ literally, i.e. the last exploration update is dropped."""
        return (self.cfg.ee.enabled and self.cfg.ee.perturb_base == "tau_minus_1"
                and self.schedule.tau_step is not None and self.step == self.schedule.tau_step - 1)

    def _frozen_features(self) -> FrozenFeatures | None:
        """The cached z̄ while exploiting with the backbone frozen in eval mode (built on first use after the switch
        or after a resume); None before the switch, for a model without surgery, or with a train-mode backbone."""
        if self._frozen is None and self._head_stepper is not None and self.wrapper.switched \
                and self.wrapper.backbone_mode == "eval":
            self._frozen = FrozenFeatures(self.model, self.data.x_train, self.data.x_test,
                                          self.cfg.train.eval_batch_size, self.data.augment is not None, self._layout)
        return self._frozen

    def _train_step(self) -> None:
        frozen = self._frozen_features()
        if frozen is not None and frozen.steps_on_cache:  # the head alone, on the batch's cached features
            idx = self._batch_indices()
            net, stepper, xb, yb = self.model.head, self._head_stepper, frozen.train[idx], self.data.y_train[idx]
        else:
            (xb, yb), net, stepper = self._batch(), self.model, self._stepper
        self.wrapper.train_mode()
        opt = self.wrapper.optimizer
        if isinstance(opt, torch.optim.LBFGS):  # minibatch L-BFGS: the closure re-evaluates this batch
            def closure():
                opt.zero_grad(set_to_none=True)
                value = self._mean_loss(net(xb), yb)
                value.backward()
                return value
            value = opt.step(closure)
        elif self._skip_update():
            value = self._mean_loss(net(xb), yb)  # the loss is still logged
        else:
            value = stepper.step(opt, xb, yb)
        self._batch_loss += value.detach().double()
        self._batch_count += 1

    def _mean_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses.mean_loss(self.loss, out, y)

    def _lbfgs_epoch(self) -> None:
        """One exploitation epoch of full-batch L-BFGS on cached features (docs/paper-choices.md (A7)): K steps; with
        augmentation the features are recomputed on a fresh augmented copy of the training set."""
        if self._objective is None or self.data.augment is not None:
            frozen = self._frozen_features()
            if frozen is not None and frozen.steps_on_cache:
                z = frozen.train
            else:
                gen = torch.Generator().manual_seed(2_000_003 * self.cfg.seed + self.step)
                z = cached_features(self.model, self.data.x_train, self.cfg.train.eval_batch_size, self.data.augment,
                                    gen, layout=self._layout)
            g = self.cfg.ee.exploit_optim or self.cfg.optim
            self._objective = FullBatchObjective(self.model, z, self.data.y_train, self.loss, g.weight_decay)
        value = self.wrapper.optimizer.step(self._objective.closure)
        self._batch_loss += value.detach().double()
        self._batch_count += 1

    def _after_switch(self, pert) -> None:
        counts = self.wrapper.trainable_counts()
        self.sink.emit("events", {"event": "phase_switch", "step": self.step, "epoch": self.epoch,
                                  **pert.to_record(), **counts})
        t0 = time.perf_counter()
        self._frozen_features()  # exploitation's one pass of the backbone over the data
        self.timers["exploit_seconds"] += time.perf_counter() - t0
        self._evaluate()  # the loss at θ^τ, right after the perturbation
        self.diag.at_switch(self.step, self.wrapper.phase.value)
        self._checkpoint("post_switch")

    def _checkpoint(self, reason: str) -> None:
        self.diag.flush()  # every row up to this step is emitted before the state that follows it is offered
        self.sink.checkpoint(self.state_dict, step=self.step, epoch=self.epoch, reason=reason)

    def _offer_branch_point(self) -> None:
        """The state right after the update that reached this step, before its evaluation: every row emitted so
        far has step < self.step, and whatever follows may depend on the branch's own τ (its evaluation at τ)."""
        self.diag.flush()
        self.sink.checkpoint(lambda: {**self.state_dict(), "mid_step": True}, step=self.step, epoch=self.epoch,
                             reason=branching.BRANCH_POINT)

    # ----------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _evaluate(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.model.eval()
        row: dict[str, Any] = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                               "phase": self.wrapper.phase.value}
        frozen = self._frozen_features()
        for split, x, y in (("train", self.data.x_train, self.data.y_train),
                            ("test", self.data.x_test, self.data.y_test)):
            if x.shape[0] == 0:
                continue
            z = frozen.of(split) if frozen is not None else None  # the backbone's output, cached while exploiting
            loss_sum, wrong = 0.0, 0
            for i in range(0, x.shape[0], self.cfg.train.eval_batch_size):
                chunk = slice(i, i + self.cfg.train.eval_batch_size)
                out = self.model.head(z[chunk]) if z is not None else self.model(self._layout(x[chunk]))
                yb = y[chunk]
                loss_sum += float(losses.per_sample_loss(self.loss, out, yb).double().sum())
                wrong += int((losses.predictions(self.loss, out) != yb).sum())
            row[f"{split}_loss"], row[f"{split}_error"] = loss_sum / x.shape[0], wrong / x.shape[0]
        row["batch_loss"] = float(self._batch_loss / self._batch_count) if self._batch_count else None
        self._batch_loss.zero_()
        self._batch_count = 0
        row["lr"] = float(self.wrapper.optimizer.param_groups[0]["lr"])
        row.update(self._param_norms())
        self.timers["eval_seconds"] += time.perf_counter() - t0
        row.update({k: v for k, v in self.timers.items() if k != "setup_seconds"})
        self.sink.emit("steps", row)
        self.last_eval = row
        if not math.isfinite(row["train_loss"]):
            raise TrialDiverged(f"training loss is {row['train_loss']} at step {self.step} (epoch "
                                f"{row['epoch']:.2f}, phase {row['phase']}, lr {row['lr']:g})")
        return row

    def _param_norms(self) -> dict[str, float]:
        """‖θ‖ per label: cheap, and the first sign that freezing works (frozen norms stay constant)."""
        if not isinstance(self.model, EEModel):
            return {"norm_body": float(torch.sqrt(sum((p.double() ** 2).sum() for p in self.model.parameters())))}
        out: dict[str, float] = {}
        for label in ("body", HIDDEN, "head"):
            sq = sum(float((p.double() ** 2).sum()) for p in self.model.params_of(label))
            out[f"norm_{label}"] = math.sqrt(sq)
        return out

    # ----------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        state = {
            "format": CHECKPOINT_FORMAT, "config": to_flat(self.cfg), "step": self.step,
            "model": self.model.state_dict(), "wrapper": self.wrapper.state_dict(),
            "rng_cpu": torch.get_rng_state(), "timers": dict(self.timers),
            "batch_loss": self._batch_loss, "batch_count": self._batch_count, "last_eval": self.last_eval,
            "diag": self.diag.state_dict(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return copy.deepcopy(state)  # detached from live tensors: a sink may keep it in memory

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}")
        if state["config"] != to_flat(self.cfg):
            diff = {k: (v, state["config"].get(k)) for k, v in to_flat(self.cfg).items() if state["config"].get(k) != v}
            raise ValueError(f"checkpoint was written by a different config; differing fields (now, then): {diff}")
        self._load(state)

    def load_branch_state(self, state: dict[str, Any]) -> None:
        """Continue from another config's branch-point state (its trunk): allowed when every exploration field is
        equal and the state is at this config's branch step (:func:`eeray.branching.check_branch_state`)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}")
        branching.check_branch_state(from_flat(state["config"]), self.cfg, step=state["step"],
                                     mid_step=bool(state.get("mid_step")), switched=state["wrapper"]["switched"],
                                     steps_per_epoch=self.steps_per_epoch)
        # the trunk's perturbation seed was never used (it has not switched); the branch switches with its own
        self._load({**state, "wrapper": {**state["wrapper"], "perturb_seed": self.wrapper.perturb_seed}})

    def _load(self, state: dict[str, Any]) -> None:
        # a copy: the caller may hand the same state to several branches, and loading aliases CPU tensors (the
        # batch-loss accumulator, optimizer buffers) that training then updates in place
        state = copy.deepcopy(state)
        self.model.load_state_dict(state["model"])
        self.wrapper.load_state_dict(state["wrapper"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.step, self.timers = state["step"], dict(state["timers"])
        self._batch_loss = state["batch_loss"].to(self.device)
        self._batch_count, self.last_eval = state["batch_count"], state["last_eval"]
        self.diag.load_state_dict(state["diag"])
        self._stepper.reset()  # captured graphs point at the optimizer state tensors just replaced
        if self._head_stepper is not None:
            self._head_stepper.reset()
        self._frozen = None  # computed again from the loaded backbone when exploitation needs it
        self.resumed = True
        self._mid_step = bool(state.get("mid_step", False))

    # ----------------------------------------------------------------------- end
    def _finish(self) -> TrialResult:
        self.diag.close()
        final = self.last_eval
        summary: dict[str, Any] = {
            "status": "completed", "n": self.data.n, "m_y": self.data.spec.m_y, "loss": self.loss, "d": self.d,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.schedule.total_steps,
            "tau_step": self.schedule.tau_step,
            **{f"final_{k}": final.get(k) for k in ("train_loss", "train_error", "test_loss", "test_error")},
            **self.timers, "train_seconds": self.timers["explore_seconds"] + self.timers["exploit_seconds"],
            "device": str(self.device), "hardware": _hardware(self.device), "torch": torch.__version__,
            "memory_format": "channels_last" if self._nhwc else "contiguous",
            "perturb_seed": perturb_seed_of(self.cfg), **self.diag.summary(),
        }
        if self._stepper.enabled and self.device.type == "cuda":
            steppers = [g for g in (self._stepper, self._head_stepper) if g is not None]  # whole model; head alone
            disabled = next((g.disabled for g in steppers if g.disabled), None)
            summary["train_step_graphs"] = f"off: {disabled}" if disabled else \
                f"on ({sum(g.replays for g in steppers)} of {self.schedule.total_steps} steps replayed)"
        if isinstance(self.model, EEModel):
            info = self.model.info
            summary.update({"surgery_mode": info.mode, "m_bar": info.m_bar, "m_H_minus_1": info.m_H_minus_1,
                            "m_H": info.m_H, "m_H_source": info.m_H_source, **self.wrapper.trainable_counts()})
            if self.wrapper.perturbation is not None:
                summary.update(self.wrapper.perturbation.to_record())
            runner = self.model.body_runner
            if runner is not None:
                summary["frozen_body_graphs"] = f"off: {runner.disabled}" if runner.disabled else \
                    f"on ({len(runner.graphs)} shapes)"
        self.sink.emit("summary", summary)
        self._checkpoint("end")
        return TrialResult(summary, self.model, self.data)


def _hardware(device: torch.device) -> str:
    """What decides a trial's floating-point results besides its config: the GPU, or on a CPU its model, the
    instruction set its kernels use (``AVX2`` on any x86-64 CPU, eeray.cpu_kernels; ``AVX512, MKL uncapped``
    where a user opted out: reductions are summed in a different order) and the thread count, e.g. ``'AMD EPYC
    7B13, AVX2 (1 threads)'``. A trial re-run with the same instruction set and threads is bitwise its record
    (docs/results-schema.md, "What is bitwise")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {cpu_kernels.describe()} ({torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()
