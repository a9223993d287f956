"""The generator trainers' shared loop (xaisdk.train.loop) on a tiny real model: exact resume, checkpoint
cadence and atomicity, refusals of runs that cannot continue, the progress bar, sample grids, history."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xaisdk.errors import InputError
from xaisdk.models import load_shipped_classifier
from xaisdk.models.checkpoint import atomic_torch_save
from xaisdk.train.grids import save_image_grid
from xaisdk.train.loop import TrainingLoop, seeded_generator

TERMS = ("loss", "first_weight")
DATA = torch.linspace(0, 1, 64).reshape(16, 1, 2, 2)


@dataclass
class TinyConfig:
    steps: int = 6
    lr: float = 0.05
    seed: int = 0
    log_every: int = 2
    sample_every: int = 3
    checkpoint_every: int = 2


@pytest.fixture(scope="module")
def classifier():
    return load_shipped_classifier("digits")


def read(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def train_tiny(config: TinyConfig, *, out: Path | None = None, resume: bool = False, classifier=None,
               samples_dir: Path | None = None, progress: bool = False, saved_steps: list | None = None):
    """A trainer as the generator trainers use the loop: its network, its step, what it saves."""
    rng = seeded_generator(config.seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(2, 1))
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    loop = TrainingLoop("train tiny", TERMS, config, recorded=asdict(config), rng=rng, optimizers={"opt": opt}, out=out,
                        samples_dir=samples_dir, progress=progress, classifier=classifier)
    if resume:
        loop.resume(read, ("lr", "seed"), lambda payload, state: net.load_state_dict(payload["net"]))

    def step() -> dict:
        x = DATA[torch.randint(0, len(DATA), (4,), generator=rng)]
        noise = torch.randn(4, 1, generator=rng)
        loss = (net(x) - x.mean((1, 2, 3))[:, None] - 0.1 * noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss, "first_weight": float(net[0].weight.detach().flatten()[0])}

    def save(path: Path, step: int, state: dict) -> None:
        atomic_torch_save({"net": net.state_dict(), "training": loop.training_info(step), "training_state": state}, path)
        if saved_steps is not None:
            saved_steps.append((step, read(path)["training_state"]["step"], sorted(p.name for p in path.parent.iterdir())))

    def draw(path: Path, step: int) -> None:
        with torch.no_grad():
            out_images = torch.sigmoid(net[0](DATA[:2])).numpy()
        save_image_grid(path, np.stack([DATA[:2, :, :1, :1].numpy(), out_images[:, :1, :1, :1]]), title=f"step {step}")

    loop.run(step, modules=(net,), draw=draw, save=save, postfix={"loss": ("loss", ".3f")})
    return net, loop


def test_resume_gives_the_weights_and_history_of_one_run(tmp_path):
    whole, whole_loop = train_tiny(TinyConfig(steps=7))
    path = tmp_path / "run.pt"
    train_tiny(TinyConfig(steps=3), out=path)  # logs at 2 and 3, saves at 2 and 3
    resumed, resumed_loop = train_tiny(TinyConfig(steps=7), out=path, resume=True)
    assert resumed_loop.start_step == 3
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    # a log at the interruption (step 3) is the one difference: the means before it were cut there
    assert whole_loop.history["step"] == [2, 4, 6, 7]
    assert resumed_loop.history["step"] == [2, 3, 4, 6, 7]
    assert resumed_loop.history["loss"][-1] == whole_loop.history["loss"][-1]
    assert resumed_loop.history["first_weight"][-1] == whole_loop.history["first_weight"][-1]
    assert read(path)["training"]["steps_done"] == 7


def test_resume_at_a_log_step_gives_the_same_history(tmp_path):
    whole, whole_loop = train_tiny(TinyConfig(steps=6))
    path = tmp_path / "run.pt"
    train_tiny(TinyConfig(steps=4), out=path)
    resumed, resumed_loop = train_tiny(TinyConfig(steps=6), out=path, resume=True)
    assert resumed_loop.history == whole_loop.history
    assert resumed_loop.result()["final"] == whole_loop.result()["final"]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())


def test_resume_past_the_end_keeps_the_saved_model(tmp_path):
    path = tmp_path / "run.pt"
    done, _ = train_tiny(TinyConfig(steps=4), out=path)
    again, loop = train_tiny(TinyConfig(steps=2), out=path, resume=True)
    assert loop.steps_done == 4 and loop.history["step"] == [2, 4]
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in done.state_dict().items())


def test_checkpoints_at_the_cadence_and_at_the_end_without_temporary_files(tmp_path):
    saved: list = []
    path = tmp_path / "run.pt"
    train_tiny(TinyConfig(steps=5, checkpoint_every=2), out=path, saved_steps=saved)
    assert [(step, on_disk) for step, on_disk, _ in saved] == [(2, 2), (4, 4), (5, 5)]
    assert all(files == ["run.pt"] for _, _, files in saved)  # each write renamed its temporary into place
    state = read(path)["training_state"]
    assert state["step"] == 5 and sorted(state) == ["history", "opt", "rng", "seconds", "step"]
    saved.clear()
    train_tiny(TinyConfig(steps=5), saved_steps=saved)  # no out: no checkpoint
    assert saved == []


def test_checkpoint_records_the_classifier_and_resume_removes_dead_writers_temporaries(tmp_path, classifier):
    path = tmp_path / "run.pt"
    train_tiny(TinyConfig(steps=2), out=path, classifier=classifier)
    assert isinstance(read(path)["training_state"]["classifier_hash"], float)
    orphan = tmp_path / ".run.pt.999999999.0123456789ab.tmp"  # a killed writer's (pid beyond pid_max)
    orphan.write_bytes(b"cut short")
    train_tiny(TinyConfig(steps=3), out=path, resume=True, classifier=classifier)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]


def test_resume_refuses_other_hyper_parameters(tmp_path):
    path = tmp_path / "run.pt"
    train_tiny(TinyConfig(steps=2), out=path)
    with pytest.raises(InputError, match=r"run.pt: cannot resume with different hyper-parameters \(lr: 0.05 -> 0.1\)"):
        train_tiny(TinyConfig(steps=4, lr=0.1), out=path, resume=True)
    train_tiny(TinyConfig(steps=4, log_every=1, sample_every=1, checkpoint_every=1), out=path, resume=True)  # not run keys


def test_resume_refuses_another_classifier(tmp_path, classifier):
    path = tmp_path / "run.pt"
    train_tiny(TinyConfig(steps=2), out=path, classifier=classifier)
    other = copy.deepcopy(classifier)
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    with pytest.raises(InputError, match="run.pt: was trained against a different classifier"):
        train_tiny(TinyConfig(steps=4), out=path, resume=True, classifier=other)


@pytest.mark.parametrize("where", ["optimizer", "trainer_entry"])
def test_resume_refuses_non_finite_state(tmp_path, where):
    path = tmp_path / "run.pt"
    train_tiny(TinyConfig(steps=2), out=path)
    payload = read(path)
    if where == "optimizer":
        payload["training_state"]["opt"]["state"][0]["exp_avg"].fill_(float("nan"))
        expected = r"run.pt: training state opt\.state\.0\.exp_avg has NaN or infinite values"
    else:  # what a trainer adds to the state (its critic's weights) is checked too
        payload["training_state"]["critic"] = {"state_dict": {"weight": torch.tensor([0.0, float("inf")])}}
        expected = r"run.pt: training state critic\.state_dict\.weight has NaN or infinite values"
    atomic_torch_save(payload, path)
    with pytest.raises(InputError, match=expected):
        train_tiny(TinyConfig(steps=4), out=path, resume=True)


def test_resume_refuses_files_without_a_fitting_training_state(tmp_path):
    path = tmp_path / "run.pt"
    train_tiny(TinyConfig(steps=2), out=path)
    payload = read(path)
    atomic_torch_save({k: v for k, v in payload.items() if k != "training_state"}, path)
    with pytest.raises(InputError, match="run.pt: has no training state to resume from"):
        train_tiny(TinyConfig(steps=4), out=path, resume=True)
    del payload["training_state"]["opt"]
    atomic_torch_save(payload, path)
    with pytest.raises(InputError, match=r"training state does not fit this run \(KeyError: 'opt'\)"):
        train_tiny(TinyConfig(steps=4), out=path, resume=True)
    with pytest.raises(InputError, match=r"resume needs the checkpoint path \(out\)"):
        train_tiny(TinyConfig(steps=4), resume=True)


def test_progress_bar_can_be_turned_off(capsys):
    train_tiny(TinyConfig(steps=3), progress=False)
    assert capsys.readouterr().err == ""
    train_tiny(TinyConfig(steps=3), progress=True)
    err = capsys.readouterr().err
    assert "train tiny" in err and "3/3" in err and "loss=" in err


def test_sample_grids_at_the_cadence_and_at_the_end(tmp_path):
    samples = tmp_path / "samples"
    train_tiny(TinyConfig(steps=7, sample_every=3), samples_dir=samples)
    assert sorted(p.name for p in samples.iterdir()) == ["step_000003.png", "step_000006.png", "step_000007.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in samples.iterdir())


def test_history_holds_the_means_over_each_log_interval_and_modules_end_in_eval_mode():
    net = nn.Linear(1, 1)
    values = iter([1.0, 3.0, 5.0, 6.0, 7.0])
    schedule = TinyConfig(steps=5, log_every=2)
    loop = TrainingLoop("t", ("loss",), schedule, recorded=asdict(schedule), rng=seeded_generator(0), optimizers={},
                        progress=False)
    seen_modes = []

    def step() -> dict:
        seen_modes.append(net.training)
        return {"loss": torch.tensor(next(values), requires_grad=True)}

    net.eval()
    loop.run(step, modules=(net,))
    assert seen_modes == [True] * 5 and not net.training
    assert loop.history == {"loss": [2.0, 5.5, 7.0], "step": [2, 4, 5]}
    assert loop.result()["final"] == {"loss": 7.0}
    assert loop.training_info(5)["config"] == asdict(schedule) and loop.training_info(5)["steps_done"] == 5
