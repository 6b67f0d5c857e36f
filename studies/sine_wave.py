"""GD vs A(GD) on the sine wave (paper §3.4.1, Figs. 2–3) as a sensitivity study over what the paper leaves open.

The paper's figure did not reproduce cleanly (docs/paper-choices.md (G)): the outcome moves with the
seed and with choices the paper does not state. So this study sweeps them — hidden layers {2, 3}, bias init
{PyTorch default, zero, N(0, 1/m)}, first-layer std {1/√300, 1} — over ≥ 10 seeds, with E3's settings otherwise
(full-batch SGD lr 0.1 momentum 0.98, BCE, softplus ς = 100, ς' = 1000, ε = 0.01, τ = 2000 steps, 10,000
epochs, m_H = 300), tracks ‖M(θ_t) − M(θ_0)‖ over time (Fig. 3) and logs, for every A trial, the Lemma-5 numerical
rank of the exploitation features at θ^τ (the theory's condition for A to reach zero error).

Run:      python studies/sine_wave.py
Smoke:    python studies/sine_wave.py --smoke
E3 only:  python studies/sine_wave.py --profile e3              # the paper's one setting, seeds 0-4, ~10 min
Runtime:  laptop (2,000 epochs) ~45 min on 2 cores; paper (10,000 epochs, 240 trials) ~6 CPU-hours
Expect:   per choice, the fraction of seeds where GD gets stuck (final training error > 0) and where A(GD)
          reaches zero training error; A's success tracks the Lemma-5 rank at θ^τ (= n), not the choice itself.
"""
import sys
from pathlib import Path

# Runs from any working directory, eeray installed or not: this clone's eeray goes first on sys.path, so neither
# an older installed copy nor a folder named eeray in the working directory is imported instead (a study file
# kept outside a clone uses the installed eeray). docs/reference.md, "Running a study file".
_CLONE = Path(__file__).resolve().parents[1]
if (_CLONE / "eeray" / "__init__.py").is_file() and sys.path[:1] != [str(_CLONE)]:
    sys.path.insert(0, str(_CLONE))

import pandas as pd

from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.cli import main
from eeray.study import Study

SIZES = {  # profile: (epochs, τ in steps, seeds, diagnostics every k epochs, full sensitivity grid?)
    "smoke": (150, 30, [0, 1], 50, False),
    "laptop": (2000, 400, list(range(10)), 100, True),
    "paper": (10000, 2000, list(range(10)), 250, True),
    "e3": (10000, 2000, list(range(5)), 250, False),  # docs/paper-choices.md (E3): 2 layers, default bias, std 1/√300
}
CHOICES = ("cfg.model.fc_hidden_layers", "cfg.model.fc_bias_init", "cfg.model.fc_first_layer_std")


def build(profile: str) -> Study:
    epochs, tau, seeds, every, full = SIZES[profile]
    base = TrialConfig(
        data=DataConfig(name="sine"),  # n = 100, x ~ U[-1, 1], y = 1{sin(20x) < 0}
        model=ModelConfig(arch="fcnet", fc_width=300, softplus_beta=100.0),
        optim=OptimConfig(lr=0.1, momentum=0.98),
        ee=EEConfig(gate_scale=1000.0, epsilon=0.01, tau=tau, tau_unit="steps"),  # m_H = 300: the replaced width
        train=TrainConfig(epochs=epochs, batch_size=100, eval_every=max(1, epochs // 200),
                          checkpoint_every_epochs=max(1, epochs // 10)),
        diag=DiagConfig(alignment=True, every=every, unit="epochs", delta_m=True, lemma5=True),
    )
    grid = {"model.fc_hidden_layers": [2, 3] if full else [2],
            "model.fc_bias_init": ["default", "zero", "normal"] if full else (
                ["default"] if profile == "e3" else ["default", "zero"]),
            "model.fc_first_layer_std": [None, 1.0] if full else [None],
            "seed": seeds}
    return Study(name="sine_wave", base=base, grid=grid,
                 variants={"GD": {"ee.enabled": False}, "A(GD)": {"ee.enabled": True}},
                 summary_columns=("final_train_error", "lemma5_full_rank", "final_Q_T"), summarize=summarize)


def summarize(results) -> pd.DataFrame:
    """Per choice: fraction of seeds where GD gets stuck and where A(GD) reaches zero training error, and, for
    A, the fraction whose exploitation features at θ^τ had full numerical rank (Lemma 5)."""
    t = results.trials[results.trials.status == "completed"].copy()
    if t.empty:
        return pd.DataFrame()
    layers, bias, std = (t[c] for c in CHOICES)
    std = std.map(lambda v: "1/√300" if pd.isna(v) else f"{v:g}")
    t["choice"] = layers.map(str) + " | " + bias.map(str) + " | " + std
    t["zero_error"] = t.final_train_error == 0
    gd = t[~t["cfg.ee.enabled"]].groupby("choice").agg(gd_seeds=("zero_error", "size"),
                                                      gd_stuck=("zero_error", lambda z: 1 - z.mean()))
    a = t[t["cfg.ee.enabled"]].groupby("choice").agg(a_seeds=("zero_error", "size"), a_zero=("zero_error", "mean"),
                                                    a_lemma5_full_rank=("lemma5_full_rank", "mean"))
    out = gd.join(a, how="outer").reset_index()
    out.columns = ["hidden layers | bias init | first-layer std", "GD seeds", "GD stuck", "A seeds", "A zero error",
                   "A rank n at τ"]
    return out


if __name__ == "__main__":
    raise SystemExit(main(build, extra_profiles=("e3",)))
