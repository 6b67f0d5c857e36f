"""eeray: hyperparameter and scaling studies of the Exploration-Exploitation (EE) wrapper (Kawaguchi, Zhang &
Deng, Neural Computation 2022) on Ray.

The public names live here; importing eeray imports no Ray (Ray is imported by the modules under eeray.raytune only,
when a study, an actor pool or a cluster rehearsal runs).
"""
from eeray.config import (ConfigError, DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig,
                          TrialConfig, from_dict, from_flat, to_dict, to_flat, validate)
from eeray.data import DATASETS, TrainingData, load_dataset
from eeray.models import FCNet, LeNet, PreActResNet18, build_model
from eeray.records import MemorySink, NullSink, Sink
from eeray.surgery import BODY, HEAD, HIDDEN, EEHead, EEModel, SurgeryError, to_ee_model
from eeray.trial import TrialDiverged, TrialResult, run_trial
from eeray.wrapper import EEWrapper, Phase, PhaseSchedule, make_optimizer_factory, sgd

__version__ = "0.1.0"
__all__ = [
    "ConfigError", "DataConfig", "DiagConfig", "EEConfig", "ModelConfig", "OptimConfig", "TrainConfig", "TrialConfig",
    "from_dict", "from_flat", "to_dict", "to_flat", "validate", "DATASETS", "TrainingData", "load_dataset",
    "FCNet", "LeNet", "PreActResNet18", "build_model", "MemorySink", "NullSink", "Sink", "BODY", "HIDDEN", "HEAD",
    "EEHead", "EEModel", "SurgeryError", "to_ee_model", "TrialDiverged", "TrialResult", "run_trial", "EEWrapper",
    "Phase", "PhaseSchedule", "make_optimizer_factory", "sgd",
]
