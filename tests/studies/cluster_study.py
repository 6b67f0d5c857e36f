"""A small study for the cluster tests: two LeNet trials on random 16x16 images with a checkpoint at every epoch,
so a node, an actor or the driver can be lost mid-trial. Profile ``one``: one trial of two epochs (which Ray ran
it is what the test asks); ``gpus2``: the same asking two GPUs, which no node of the rehearsal can hold. Profile ``actors``: one trial whose alignment reports
run on a diagnostics actor (``diag.actors = 1``), every 4 steps, so an actor can be lost mid-evaluation."""
from eeray.cli import main
from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.study import Resources, Study


def build(profile: str) -> Study:
    actors, one = profile == "actors", profile in ("one", "gpus2")
    base = TrialConfig(
        data=DataConfig(name="random16", n_train=64 if actors else 96, n_test=32),
        model=ModelConfig(arch="lenet", lenet_mc=1, lenet_pool="none"),
        optim=OptimConfig(lr=0.05, momentum=0.9),
        ee=EEConfig(tau=0.5, epsilon=1e-2, m_H=4),
        train=TrainConfig(epochs=16 if actors else 2 if one else 30, batch_size=16, eval_every=2, eval_unit="steps",
                          checkpoint_every_epochs=1),
        diag=DiagConfig(alignment=True, every=4, unit="steps", actors=1, lemma5=False, method="dense")
        if actors else DiagConfig())
    return Study(name="cluster_actors" if actors else "cluster", base=base,
                 grid={"seed": [0] if actors or one else [0, 1]}, variants={"ee": {}},
                 resources=Resources(cpu=1, gpu=2 if profile == "gpus2" else 0, diag_actors=1 if actors else 0),
                 max_failures=2, summary_columns=("final_train_error",))


if __name__ == "__main__":
    raise SystemExit(main(build, extra_profiles=("actors", "one", "gpus2")))
