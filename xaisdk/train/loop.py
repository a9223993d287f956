"""The training loop the generator trainers share (GANMEX, ExplainGAN, Progressive Exaggeration, inpainter).

A trainer seeds with :func:`seeded_generator`, builds its networks and optimizers, hands them to a
:class:`TrainingLoop` and runs it with its own step function (its losses and optimizer steps), its
sample drawing and its checkpoint writer. The loop does the rest: the progress bar, the means of the
loss terms logged every ``log_every`` steps, a sample grid every ``sample_every`` steps, an atomic
checkpoint every ``checkpoint_every`` steps and at the end (with the training state an exact resume
needs), and the resume itself with its refusals (:mod:`xaisdk.train._resume`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from xaisdk.errors import InputError
from xaisdk.models.checkpoint import Classifier, weights_hash
from xaisdk.train._resume import restore_loop, resumable_state, saved_run_config

__all__ = ["Schedule", "TrainingLoop", "seeded_generator"]

StepFunction = Callable[[], Mapping[str, Any]]


class Schedule(Protocol):
    """What the loop reads from a trainer's config: the step count and the three cadences."""

    steps: int
    log_every: int
    sample_every: int
    checkpoint_every: int


def seeded_generator(seed: int) -> torch.Generator:
    """Seed torch's global RNG (the networks' initial weights: build them right after) and return a
    generator of the same seed for everything the loop draws (batches, targets); only the latter is
    saved in checkpoints, so a resumed run draws what the uninterrupted one would have.

    >>> a, b = seeded_generator(0), seeded_generator(0)
    >>> torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    True
    """
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class TrainingLoop:
    """Runs ``schedule.steps`` steps of a trainer, logs, draws samples, checkpoints and resumes.

    ``terms`` are the names of the values the step function returns (their means over ``log_every``
    steps make the history); ``recorded`` the run's hyper-parameters as they are written in the model's
    ``training["config"]`` and compared on resume; ``optimizers`` are saved and restored under their
    names; ``classifier``, if given, is the frozen one the run trains against (its weights hash is
    saved and checked on resume). ``out`` is the checkpoint written every ``checkpoint_every`` steps;
    ``samples_dir`` the folder of the ``step_NNNNNN.png`` grids.

    >>> from types import SimpleNamespace
    >>> rng = seeded_generator(0)
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> schedule = SimpleNamespace(steps=4, log_every=2, sample_every=2, checkpoint_every=2)
    >>> loop = TrainingLoop("train demo", ("loss",), schedule, recorded={"lr": 0.1}, rng=rng,
    ...                     optimizers={"opt": opt}, progress=False)
    >>> def step():
    ...     loss = net(torch.rand(8, 2, generator=rng)).pow(2).mean()
    ...     opt.zero_grad()
    ...     loss.backward()
    ...     opt.step()
    ...     return {"loss": loss}
    >>> loop.run(step, modules=(net,))
    >>> loop.history["step"], sorted(loop.result())
    ([2, 4], ['final', 'loss', 'seconds', 'step'])
    """

    def __init__(self, name: str, terms: Sequence[str], schedule: Schedule, *, recorded: Mapping[str, Any],
                 rng: torch.Generator, optimizers: Mapping[str, torch.optim.Optimizer],
                 out: str | os.PathLike | None = None, samples_dir: str | os.PathLike | None = None,
                 progress: bool = True, classifier: Classifier | None = None) -> None:
        self.name = name
        self.terms = tuple(terms)
        self.schedule = schedule
        self.recorded = dict(recorded)
        self.rng = rng
        self.optimizers = dict(optimizers)
        self.out = Path(out) if out is not None else None
        self.samples_dir = Path(samples_dir) if samples_dir is not None else None
        self.progress = progress
        self.classifier = classifier
        self.history: dict[str, Any] = {term: [] for term in self.terms} | {"step": []}
        self.start_step = 0
        self.elapsed = 0.0

    def resume(self, read: Callable[[Path], Mapping[str, Any]], run_keys: Sequence[str],
               restore_networks: Callable[[Mapping[str, Any], Mapping[str, Any]], None]) -> None:
        """Continue the run saved in ``out``: ``read`` it (the trainer's format-checked reader), refuse it
        if it has no training state, other values of ``run_keys``, another classifier or non-finite
        values, then ``restore_networks(payload, state)`` and restore the optimizers, the RNG, the
        history, the step and the seconds.

        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> path = Path(tempfile.mkdtemp()) / "run.pt"
        >>> def make(lr):
        ...     return TrainingLoop("train demo", ("loss",), SimpleNamespace(steps=2, log_every=1, sample_every=1,
        ...                         checkpoint_every=1), recorded={"lr": lr}, rng=seeded_generator(0),
        ...                         optimizers={"opt": opt}, out=path, progress=False)
        >>> first = make(0.1)
        >>> first.run(lambda: {"loss": 1.0}, save=lambda p, step, state: torch.save(
        ...     {"training": first.training_info(step), "training_state": state}, p))
        >>> second = make(0.1)
        >>> second.resume(torch.load, ["lr"], lambda payload, state: None)
        >>> second.start_step, second.history["loss"]
        (2, [1.0, 1.0])
        >>> try:
        ...     make(0.2).resume(torch.load, ["lr"], lambda payload, state: None)
        ... except InputError as err:
        ...     print(str(err).removeprefix(f"{path}: "))
        cannot resume with different hyper-parameters (lr: 0.1 -> 0.2)
        """
        if self.out is None:
            raise InputError("resume needs the checkpoint path (out)")
        path = self.out
        payload = read(path)
        state = resumable_state(payload, path, saved_run_config(payload), self.recorded, run_keys, self.classifier)
        self.start_step, self.elapsed = restore_loop(state, path, lambda: restore_networks(payload, state),
                                                     self.optimizers, self.rng, self.history)

    def run(self, step: StepFunction, *, modules: Sequence[torch.nn.Module] = (),
            postfix: Mapping[str, tuple[str, str]] | None = None,
            draw: Callable[[Path, int], Any] | None = None,
            save: Callable[[Path, int, dict[str, Any]], Any] | None = None) -> None:
        """Run the steps from ``start_step`` to ``schedule.steps``, ``modules`` in training mode (eval mode
        after). ``step()`` does one optimisation step and returns a value for every term. The bar shows
        ``postfix`` (label: (term, format)) of the last logged means; ``draw(path, step)`` writes a sample
        grid (only with ``samples_dir``); ``save(path, step, state)`` writes the checkpoint (only with
        ``out``) with ``state`` = :meth:`training_state`.

        >>> from types import SimpleNamespace
        >>> loop = TrainingLoop("train demo", ("loss",), SimpleNamespace(steps=3, log_every=2, sample_every=9,
        ...                     checkpoint_every=9), recorded={}, rng=seeded_generator(0), optimizers={}, progress=False)
        >>> values = iter([1.0, 2.0, 6.0])
        >>> loop.run(lambda: {"loss": next(values)}, postfix={"loss": ("loss", ".2f")})
        >>> loop.history
        {'loss': [1.5, 6.0], 'step': [2, 3]}
        """
        schedule = self.schedule
        for module in modules:
            module.train()
        bar = tqdm(range(self.start_step, schedule.steps), desc=self.name, unit="step", disable=not self.progress,
                   initial=self.start_step, total=schedule.steps)
        running = dict.fromkeys(self.terms, 0.0)
        counted = 0
        for index in bar:
            tick = time.perf_counter()
            values = step()
            self.elapsed += time.perf_counter() - tick
            for term in self.terms:
                value = values[term]
                running[term] += float(value.detach() if isinstance(value, torch.Tensor) else value)
            counted += 1
            done = index + 1
            last = done == schedule.steps
            if done % schedule.log_every == 0 or last:
                self.history["step"].append(done)
                for term in self.terms:
                    self.history[term].append(running[term] / counted)
                    running[term] = 0.0
                counted = 0
                if postfix:
                    bar.set_postfix({label: format(self.history[term][-1], spec) for label, (term, spec) in postfix.items()})
            if draw is not None and self.samples_dir is not None and (done % schedule.sample_every == 0 or last):
                draw(self.samples_dir / f"step_{done:06d}.png", done)
            if save is not None and self.out is not None and (done % schedule.checkpoint_every == 0 or last):
                save(self.out, done, self.training_state(done))
        for module in modules:
            module.eval()

    @property
    def steps_done(self) -> int:
        """The step the model stands at after :meth:`run` (a resumed run may be past ``schedule.steps``).

        >>> from types import SimpleNamespace
        >>> TrainingLoop("demo", (), SimpleNamespace(steps=5), recorded={}, rng=torch.Generator(), optimizers={}).steps_done
        5
        """
        return max(self.schedule.steps, self.start_step)

    def final(self) -> dict[str, float | None]:
        """The last logged mean of every term (None before the first log).

        >>> from types import SimpleNamespace
        >>> TrainingLoop("demo", ("loss",), SimpleNamespace(steps=1), recorded={}, rng=torch.Generator(),
        ...              optimizers={}).final()
        {'loss': None}
        """
        return {term: (self.history[term][-1] if self.history[term] else None) for term in self.terms}

    def training_info(self, step: int) -> dict[str, Any]:
        """The ``training`` entry of a model at ``step``: config, steps done, seconds, final means.

        >>> from types import SimpleNamespace
        >>> TrainingLoop("demo", ("loss",), SimpleNamespace(steps=1), recorded={"lr": 0.1}, rng=torch.Generator(),
        ...              optimizers={}).training_info(0)
        {'config': {'lr': 0.1}, 'steps_done': 0, 'seconds': 0.0, 'final': {'loss': None}}
        """
        return {"config": copy.deepcopy(self.recorded), "steps_done": step, "seconds": self.elapsed,
                "final": self.final()}

    def training_state(self, step: int) -> dict[str, Any]:
        """What a checkpoint needs to resume at ``step``: the step, the seconds, every optimizer's state
        under its name, the RNG state, the history and (with a classifier) its weights hash. A trainer
        adds its own entries (its critic) to it.

        >>> from types import SimpleNamespace
        >>> loop = TrainingLoop("demo", (), SimpleNamespace(steps=1), recorded={}, rng=torch.Generator(),
        ...                     optimizers={"opt": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)})
        >>> sorted(loop.training_state(1))
        ['history', 'opt', 'rng', 'seconds', 'step']
        """
        state: dict[str, Any] = {"step": step, "seconds": self.elapsed}
        state |= {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}
        state |= {"rng": self.rng.get_state(), "history": self.history}
        if self.classifier is not None:
            state["classifier_hash"] = weights_hash(self.classifier)
        return state

    def result(self) -> dict[str, Any]:
        """What a trainer returns next to its model: the final means, the seconds and the history.

        >>> from types import SimpleNamespace
        >>> TrainingLoop("demo", ("loss",), SimpleNamespace(steps=1), recorded={}, rng=torch.Generator(),
        ...              optimizers={}).result()
        {'final': {'loss': None}, 'seconds': 0.0, 'loss': [], 'step': []}
        """
        return {"final": self.final(), "seconds": self.elapsed, **self.history}
