"""The ``xaisdk`` command."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import click

# Set before torch loads OpenMP: spinning waiters make training 10-30x slower when another process holds a core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Pillow warns about images above its own pixel limit before xaisdk refuses them (xaisdk.input_files has a
# lower one): the refusal is the one line the command prints.
warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", module="PIL")

from xaisdk import __version__  # noqa: E402
from xaisdk.errors import InputError  # noqa: E402


def _clean_errors(func):
    """Turn xaisdk.InputError (bad input) and OSError (disk full, no permission, read-only file system)
    into a one-line CLI error with exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:
            where = f"{os.fsdecode(err.filename)}: " if err.filename is not None else ""
            raise click.ClickException(f"{where}{err.strerror or err}") from None

    return wrapper


def _refuse_overwrite(path: Path, force: bool, what: str) -> None:
    if force:
        return
    if path.is_dir() and any(path.iterdir()) or path.is_file():
        raise click.ClickException(f"{what} {path} already exists; pass --force to overwrite it")


def _check_resume(out_path: Path, resume: bool, force: bool) -> None:
    """The --resume / --force rules of the training commands."""
    if resume and force:
        raise click.ClickException("--resume continues --out and --force overwrites it; pass one of them")
    if resume and not out_path.is_file():
        raise click.ClickException(f"--resume: {out_path} does not exist")
    if not resume:
        _refuse_overwrite(out_path, force, "checkpoint")


@click.group()
@click.version_option(__version__, prog_name="xaisdk")
def main() -> None:
    """xaisdk: one-vs-one attribution and generated counterfactuals for image classifiers."""


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/quickstart"), show_default=True,
              help="Folder for the figures and the summary.")
@click.option("--n-images", default=4, show_default=True, help="How many test digits to explain.")
@click.option("--target", "targets", type=int, multiple=True,
              help="Also explain against this target class (repeatable); the runner-up class is always done.")
@click.option("--seed", default=0, show_default=True, help="Seed for the image choice and sampled references.")
@click.option("--force", is_flag=True, help="Write into --out even if it holds files.")
@_clean_errors
def quickstart(out_dir: Path, n_images: int, targets: tuple[int, ...], seed: int, force: bool) -> None:
    """Explain a few test digits one-vs-one with every method; write PNG grids and a summary."""
    from xaisdk.quickstart import run_quickstart

    _refuse_overwrite(out_dir, force, "output folder")
    result = run_quickstart(out_dir, n_images=n_images, targets=targets, seed=seed, progress=sys.stderr.isatty())
    click.echo((out_dir / "summary.txt").read_text())
    for figure in result.figures:
        click.echo(f"wrote {figure}")


def _samples_dir(given: Path | None, out_path: Path) -> Path:
    """Where a training command writes its sample grids: ``--samples``, else ``<out>_samples`` next to ``--out``."""
    return given if given is not None else out_path.with_name(out_path.stem + "_samples")


def _report_training(config: object, history: dict, out_path: Path, samples: Path) -> None:
    """The last lines of a generator's training command: the final loss terms and where the files went."""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(history["final"].items()) if isinstance(v, float))
    steps, every = config.steps, config.log_every  # type: ignore[attr-defined]
    click.echo(f"trained {steps} steps; means over the last {min(every, steps)} steps: {shown}")
    click.echo(f"wrote {out_path} (samples in {samples})")


def _training_loop_options(seed_help: str | None = None,
                           resume_help: str = "Continue the run saved in --out (same classifier and settings).") -> Callable:
    """The options every generator-training command shares with the training loop it drives:
    ``--samples``, ``--sample-every``, ``--checkpoint-every``, ``--seed``, ``--resume``, ``--force``."""
    options = [
        click.option("--samples", "samples_dir", type=click.Path(path_type=Path), default=None,
                     help="Folder for the PNG sample grids.  [default: <out>_samples]"),
        click.option("--sample-every", default=None, type=int, help="[default: 500]"),
        click.option("--checkpoint-every", default=None, type=int, help="[default: 500]"),
        click.option("--seed", default=0, show_default=True, help=seed_help),
        click.option("--resume", is_flag=True, help=resume_help),
        click.option("--force", is_flag=True, help="Overwrite --out if it exists (starting afresh)."),
    ]

    def apply(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _given(**options: object) -> dict[str, object]:
    """The options the user set (not None): what overrides a training config's defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _pixel_pipeline(mean: str | None, std: str | None, resize: str, resize_shorter_to: int | None,
                    channel_order: str) -> object:
    from xaisdk.runtime.preprocessing import Preprocessing

    def numbers(text: str | None, name: str) -> tuple[float, ...] | None:
        if text is None:
            return None
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise click.ClickException(f"--{name}: expected comma-separated numbers (e.g. 0.5,0.4,0.4), got {text!r}") from None

    return Preprocessing(mean=numbers(mean, "mean"), std=numbers(std, "std"), resize=resize,
                         resize_shorter_to=resize_shorter_to, channel_order=channel_order)


def _torch_model_options(file_option: str) -> Callable:
    """The options that give a torch model by code and describe its input, shared by ``export`` and
    ``train ganmex``: ``--factory``, ``--weights``, ``--input-shape``, ``--classes``, ``--mean``, ``--std``,
    ``--resize``, ``--resize-shorter-to``, ``--channel-order`` (read by :func:`_user_model_options`)."""
    options = [
        click.option("--factory", default=None, help=f"Instead of {file_option}: 'module:function' (or 'file.py:function') "
                                                     "returning the torch module, e.g. a torchvision/timm-style builder."),
        click.option("--weights", "weights_path", default=None, type=click.Path(path_type=Path),
                     help="A state dict for --factory's module (read with torch.load(weights_only=True))."),
        click.option("--input-shape", default=None, help="C,H,W of the model's input (e.g. 3,224,224); torch models need it."),
        click.option("--classes", "classes_path", default=None, type=click.Path(path_type=Path),
                     help="A text file of class names, one per line (default: 0, 1, ...)."),
        click.option("--mean", default=None, help="Per-channel mean of the model's normalisation, on [0, 1] pixels "
                                                  "(e.g. 0.485,0.456,0.406). The model then takes RGB pixels in [0, 1]."),
        click.option("--std", default=None, help="Per-channel std of the normalisation (e.g. 0.229,0.224,0.225)."),
        click.option("--resize", default="none", show_default=True,
                     type=click.Choice(["none", "stretch", "shorter-side-crop"]),
                     help="How images of other sizes are brought to the input size (explain, serve, training images)."),
        click.option("--resize-shorter-to", default=None, type=int,
                     help="For shorter-side-crop: the shorter side before the centre crop (default: H * 256 / 224)."),
        click.option("--channel-order", default="RGB", show_default=True, type=click.Choice(["RGB", "BGR"]),
                     help="The channel order the model expects; images are always given as RGB."),
    ]

    def apply(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _user_model_options(input_shape: str | None, classes_path: Path | None, mean: str | None, std: str | None,
                        resize: str, resize_shorter_to: int | None, channel_order: str) -> dict[str, object]:
    """``input_shape``, ``class_names`` and ``preprocessing`` for the torch intake, None where not given."""
    from xaisdk.deploy.torch_intake import read_class_names, read_input_shape

    pipeline = _pixel_pipeline(mean, std, resize, resize_shorter_to, channel_order)
    return {"input_shape": None if input_shape is None else read_input_shape(input_shape),
            "class_names": None if classes_path is None else read_class_names(classes_path),
            "preprocessing": None if pipeline.is_identity else pipeline}  # type: ignore[attr-defined]


@main.group()
def train() -> None:
    """Train models (classifier, GANMEX baseline generator, inpainter)."""


@train.command("classifier")
@click.option("--dataset", required=True, help="'digits', 'shapes', an .npz with x and y, or a folder of class folders.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Checkpoint file to write.")
@click.option("--arch", default="mnist_cnn", show_default=True, type=click.Choice(["mnist_cnn", "cifar_cnn"]))
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", "learning_rate", default=1e-3, show_default=True)
@click.option("--max-shift", default=2, show_default=True, help="Random-translation augmentation in pixels.")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@_clean_errors
def train_classifier_command(dataset: str, out_path: Path, arch: str, epochs: int, batch_size: int,
                             learning_rate: float, max_shift: int, seed: int, force: bool) -> None:
    """Train a classifier and save a checkpoint (architecture, weights, class names, input spec)."""
    from xaisdk.data import load_dataset
    from xaisdk.models import save_classifier
    from xaisdk.train import ClassifierTrainingConfig, train_classifier

    _refuse_overwrite(out_path, force, "checkpoint")
    split = load_dataset(dataset, seed=seed)
    config = ClassifierTrainingConfig(arch=arch, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                      max_shift=max_shift, seed=seed)
    classifier, history = train_classifier(split, config, progress=sys.stderr.isatty())
    save_classifier(out_path, classifier)
    click.echo(f"train accuracy {history['train_accuracy']:.4f}, test accuracy {history['test_accuracy']:.4f}")
    click.echo(f"wrote {out_path}")


@train.command("ganmex")
@click.option("--dataset", required=True,
              help="The classifier's images: 'digits', 'shapes', an .npz, or a folder of class folders named after its "
                   "classes (images of any size, brought to the input shape by --resize; stretched when none).")
@click.option("--classifier", "classifier_path", default=None, type=click.Path(path_type=Path),
              help="The classifier to explain (kept frozen; it is the GAN's class discriminator): an xaisdk checkpoint "
                   "or a TorchScript file.")
@_torch_model_options("--classifier")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="GANMEX checkpoint to write (rewritten atomically every --checkpoint-every steps).")
@click.option("--steps", default=None, type=int, help="Generator steps.  [default: 3000]")
@click.option("--batch-size", default=None, type=int, help="[default: 32]")
@click.option("--lambda-cls", default=None, type=float, help="Weight of CE(S(G(x, c_t)), c_t).  [default: 1]")
@click.option("--lambda-rec", default=None, type=float, help="Weight of the cycle loss |x - G(G(x, c_t), c_o)|.  [default: 5]")
@click.option("--lambda-sim", default=None, type=float, help="Weight of the similarity loss |x - G(x, c_t)|.  [default: 5]")
@click.option("--standalone-classifier", is_flag=True,
              help="Ablation: train StarGAN's own class discriminator instead of using the classifier.")
@click.option("--generator-channels", default=None, type=int, help="Width of the generator's first layer.  [default: 16]")
@_training_loop_options()
@_clean_errors
def train_ganmex_command(dataset: str, classifier_path: Path | None, factory: str | None, weights_path: Path | None,
                         input_shape: str | None, classes_path: Path | None, mean: str | None, std: str | None, resize: str,
                         resize_shorter_to: int | None, channel_order: str, out_path: Path, steps: int | None,
                         batch_size: int | None, lambda_cls: float | None, lambda_rec: float | None,
                         lambda_sim: float | None, standalone_classifier: bool, generator_channels: int | None,
                         samples_dir: Path | None, sample_every: int | None, checkpoint_every: int | None, seed: int,
                         resume: bool, force: bool) -> None:
    """Train the GANMEX baseline generator for a classifier and save classifier + generator in one file.

    The classifier comes as the export command takes torch models: an xaisdk checkpoint, a TorchScript
    file, or --factory module:function [--weights sd.pt] with --input-shape and the pixel pipeline."""
    from xaisdk.deploy.torch_intake import load_torch_classifier
    from xaisdk.models.ganmex import GanmexModel
    from xaisdk.train.ganmex import GanmexTrainingConfig, train_ganmex, training_images

    if (classifier_path is None) == (factory is None):
        raise click.ClickException("give exactly one of --classifier FILE or --factory module:function")
    if classifier_path is not None and classifier_path.suffix.lower() == ".onnx":
        raise click.ClickException(f"--classifier {classifier_path}: GANMEX trains against a torch classifier (its "
                                   "gradients drive the generator); give the torch model (--factory, TorchScript)")
    _check_resume(out_path, resume, force)
    user_options = _user_model_options(input_shape, classes_path, mean, std, resize, resize_shorter_to, channel_order)
    classifier = load_torch_classifier(classifier_path, factory=factory, weights=weights_path, **user_options)
    if isinstance(classifier, GanmexModel):
        classifier = classifier.classifier  # a GANMEX checkpoint's classifier gets a new generator
    # Train on the classifier's own training split, so the generator never sees its test images.
    split_seed = int(classifier.metadata.get("seed", 0))
    split = training_images(dataset, classifier, seed=split_seed)
    given = _given(steps=steps, batch_size=batch_size, lambda_cls=lambda_cls, lambda_rec=lambda_rec,
                   lambda_sim=lambda_sim, generator_channels=generator_channels, sample_every=sample_every,
                   checkpoint_every=checkpoint_every)
    config = GanmexTrainingConfig(seed=seed, standalone_classifier=standalone_classifier,
                                  **given)
    samples = _samples_dir(samples_dir, out_path)
    model, history = train_ganmex(split, classifier, config, out=out_path, samples_dir=samples, resume=resume,
                                  data_spec={"name": dataset, "options": {"seed": split_seed}},
                                  progress=sys.stderr.isatty())
    final = history["final"]
    click.echo(f"trained {model.training['steps_done']} steps in {history['seconds']:.0f} s; last "
               f"{config.log_every} steps: target success {final['target_success']:.3f}, "
               f"similarity L1 {final['similarity']:.4f}")
    click.echo(f"wrote {out_path} (samples in {samples})")


@train.command("explaingan")
@click.option("--digits", default=None, help="Two digits 'A,B': train the binary digits classifier for them first (e.g. 3,8).")
@click.option("--classifier", "classifier_path", default=None, type=click.Path(path_type=Path),
              help="A binary classifier checkpoint to explain instead of --digits (needs --dataset).")
@click.option("--dataset", default=None, help="The binary classifier's dataset: an .npz with x and y, or a folder.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="ExplainGAN checkpoint to write (classifier + networks; rewritten atomically every --checkpoint-every steps).")
@click.option("--steps", default=None, type=int, help="[default: 2500]")
@click.option("--batch-size", default=None, type=int, help="Images per side per step.  [default: 16]")
@click.option("--lambda-gan", default=None, type=float, help="[default: 1]")
@click.option("--lambda-cls", default=None, type=float, help="Classifier loss on composites.  [default: 1]")
@click.option("--lambda-rec", default=None, type=float, help="L2 reconstruction.  [default: 100]")
@click.option("--lambda-const", default=None, type=float, help="Consistency outside the mask.  [default: 100]")
@click.option("--lambda-count", default=None, type=float, help="Mask count prior.  [default: 10]")
@click.option("--kappa", default=None, type=float, help="Mask area below which the count prior is free.  [default: 0.1]")
@click.option("--lambda-smooth", default=None, type=float, help="Mask total variation.  [default: 2]")
@click.option("--lambda-entropy", default=None, type=float, help="Mask entropy min(m, 1 - m).  [default: 2]")
@click.option("--no-mask", is_flag=True, help="Ablation: the transformed image is the composite (no mask, no priors).")
@click.option("--no-reconstruction", is_flag=True, help="Ablation: no reconstruction loss.")
@_training_loop_options()
@_clean_errors
def train_explaingan_command(digits: str | None, classifier_path: Path | None, dataset: str | None, out_path: Path,
                             steps: int | None, batch_size: int | None, lambda_gan: float | None, lambda_cls: float | None,
                             lambda_rec: float | None, lambda_const: float | None, lambda_count: float | None,
                             kappa: float | None, lambda_smooth: float | None, lambda_entropy: float | None, no_mask: bool,
                             no_reconstruction: bool, samples_dir: Path | None, sample_every: int | None,
                             checkpoint_every: int | None, seed: int, resume: bool, force: bool) -> None:
    """Train ExplainGAN (transformed image + change mask) for a binary classifier."""
    from xaisdk.train.explaingan import (
        ExplainGANTrainingConfig,
        binary_digits_split,
        train_binary_digits_classifier,
        train_explaingan,
    )

    if (digits is None) == (classifier_path is None):
        raise InputError("give either --digits A,B or --classifier (with --dataset)")
    _check_resume(out_path, resume, force)
    if digits is not None:
        try:
            first, second = (int(d) for d in digits.split(","))
        except ValueError:
            raise InputError(f"--digits: expected two digits 'A,B', got {digits!r}") from None
        split = binary_digits_split(first, second, seed=seed)
        if resume:
            from xaisdk.models.explaingan import load_explaingan

            classifier = load_explaingan(out_path).classifier  # the run's own classifier, not a retrained one
        else:
            classifier = train_binary_digits_classifier(first, second, seed=seed, progress=sys.stderr.isatty())
        data_spec = {"name": f"digits_{first}v{second}", "options": {"seed": seed}}
    else:
        if dataset is None:
            raise InputError("--classifier needs --dataset (the data it was trained on)")
        from xaisdk.data import load_dataset
        from xaisdk.models import load_classifier

        classifier = load_classifier(classifier_path)
        split_seed = int(classifier.metadata.get("seed", 0))
        split = load_dataset(dataset, seed=split_seed)
        data_spec = {"name": dataset, "options": {"seed": split_seed}}
    given = _given(steps=steps, batch_size=batch_size, lambda_gan=lambda_gan, lambda_cls=lambda_cls,
                   lambda_rec=lambda_rec, lambda_const=lambda_const, lambda_count=lambda_count, kappa=kappa,
                   lambda_smooth=lambda_smooth, lambda_entropy=lambda_entropy, sample_every=sample_every,
                   checkpoint_every=checkpoint_every)
    config = ExplainGANTrainingConfig(seed=seed, no_mask=no_mask, no_reconstruction=no_reconstruction,
                                      **given)
    samples = _samples_dir(samples_dir, out_path)
    _, history = train_explaingan(split, classifier, config, out=out_path, samples_dir=samples, resume=resume,
                                  data_spec=data_spec, progress=sys.stderr.isatty())
    _report_training(config, history, out_path, samples)


@train.command("exaggeration")
@click.option("--dataset", required=True, help="The classifier's dataset: 'digits', 'shapes', an .npz or a folder.")
@click.option("--classifier", "classifier_path", required=True, type=click.Path(path_type=Path),
              help="Classifier checkpoint to explain (kept frozen; f = its probability of --target-class).")
@click.option("--target-class", required=True, help="The class explained against the rest (index or name).")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Checkpoint to write (rewritten atomically every --checkpoint-every steps).")
@click.option("--bins", "n_bins", default=None, type=int, help="Bins of f(x) in [0, 1] (the condition).  [default: 10]")
@click.option("--steps", default=None, type=int, help="[default: 1500]")
@click.option("--batch-size", default=None, type=int, help="[default: 32]")
@click.option("--lambda-cgan", default=None, type=float, help="Hinge cGAN term.  [default: 1]")
@click.option("--lambda-f", default=None, type=float, help="Compatibility KL(f(x) + delta || f(x_delta)).  [default: 100]")
@click.option("--lambda-rec", default=None, type=float, help="Reconstruction and cycle L1.  [default: 100]")
@_training_loop_options()
@_clean_errors
def train_exaggeration_command(dataset: str, classifier_path: Path, target_class: str, out_path: Path, n_bins: int | None,
                               steps: int | None, batch_size: int | None, lambda_cgan: float | None, lambda_f: float | None,
                               lambda_rec: float | None, samples_dir: Path | None, sample_every: int | None,
                               checkpoint_every: int | None, seed: int, resume: bool, force: bool) -> None:
    """Train a Progressive Exaggeration explainer: a series of images walking f(x) across the boundary."""
    from xaisdk.data import load_dataset
    from xaisdk.models import load_classifier
    from xaisdk.train.exaggeration import ExaggerationTrainingConfig, train_exaggeration

    _check_resume(out_path, resume, force)
    classifier = load_classifier(classifier_path)
    names = list(classifier.class_names)
    if target_class in names:
        index = names.index(target_class)
    elif target_class.lstrip("-").isdigit() and 0 <= int(target_class) < classifier.num_classes:
        index = int(target_class)
    else:
        raise InputError(f"--target-class: {target_class!r} is neither a class name ({', '.join(names)}) nor an index "
                         f"below {classifier.num_classes}")
    split_seed = int(classifier.metadata.get("seed", 0))
    split = load_dataset(dataset, seed=split_seed)
    given = _given(n_bins=n_bins, steps=steps, batch_size=batch_size, lambda_cgan=lambda_cgan, lambda_f=lambda_f,
                   lambda_rec=lambda_rec, sample_every=sample_every, checkpoint_every=checkpoint_every)
    config = ExaggerationTrainingConfig(target_class=index, seed=seed, **given)
    samples = _samples_dir(samples_dir, out_path)
    _, history = train_exaggeration(split, classifier, config, out=out_path, samples_dir=samples, resume=resume,
                                    data_spec={"name": dataset, "options": {"seed": split_seed}},
                                    progress=sys.stderr.isatty())
    _report_training(config, history, out_path, samples)


@train.command("inpainter")
@click.option("--dataset", required=True, help="'digits', 'shapes', an .npz or a folder; trains on its train part.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Inpainter checkpoint to write (rewritten atomically every --checkpoint-every steps).")
@click.option("--steps", default=None, type=int, help="Training steps.  [default: 3000]")
@click.option("--batch-size", default=None, type=int, help="[default: 32]")
@click.option("--lr", "learning_rate", default=None, type=float, help="Adam learning rate.  [default: 0.001]")
@click.option("--base-channels", default=None, type=int, help="Width of the U-Net's first layer.  [default: 16]")
@click.option("--adversarial-weight", default=None, type=float,
              help="Weight of a PatchGAN hinge term (0: L1 only).  [default: 0]")
@_training_loop_options(seed_help="Seed of the weights, batches and training masks.",
                        resume_help="Continue the run saved in --out (same settings).")
@_clean_errors
def train_inpainter_command(dataset: str, out_path: Path, steps: int | None, batch_size: int | None,
                            learning_rate: float | None, base_channels: int | None, adversarial_weight: float | None,
                            samples_dir: Path | None, sample_every: int | None, checkpoint_every: int | None, seed: int,
                            resume: bool, force: bool) -> None:
    """Train the learned inpainter (gated-convolution U-Net) of the generative removal methods on random
    box, brush-stroke and superpixel holes; report its held-out hole L1 against a mean-colour fill."""
    from xaisdk.data import load_dataset
    from xaisdk.train.inpainter import InpainterTrainingConfig, train_inpainter

    _check_resume(out_path, resume, force)
    split = load_dataset(dataset)
    given = _given(steps=steps, batch_size=batch_size, lr=learning_rate, base_channels=base_channels,
                   adversarial_weight=adversarial_weight, sample_every=sample_every, checkpoint_every=checkpoint_every)
    config = InpainterTrainingConfig(seed=seed, **given)
    samples = _samples_dir(samples_dir, out_path)
    model, history = train_inpainter(split, config, out=out_path, samples_dir=samples, resume=resume,
                                     data_spec={"name": dataset, "options": {}}, progress=sys.stderr.isatty())
    click.echo(f"trained {model.training['steps_done']} steps in {history['seconds']:.0f} s; last "
               f"{config.log_every} steps: hole L1 {history['final']['hole_l1']:.4f}")
    heldout = history.get("heldout")
    if heldout:
        click.echo(f"held-out hole L1 on {heldout['images']} test images: learned {heldout['learned']:.4f}, "
                   f"mean-colour fill {heldout['mean_fill']:.4f}")
    click.echo(f"wrote {out_path} (samples in {samples})")


@main.command("export")
@click.option("--model", "model_path", default=None, type=click.Path(path_type=Path),
              help="The classifier: an xaisdk checkpoint (classifier or GANMEX), a TorchScript file, or an ONNX file "
                   "from any framework (.onnx: no torch needed).")
@_torch_model_options("--model")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset (13-20) for torch models.")
@click.option("--batch", default=None, type=int, help="Fix the graphs' batch size (default: dynamic).")
@click.option("--layout", default="auto", show_default=True, type=click.Choice(["auto", "NCHW", "NHWC"]),
              help="An ONNX file's image axes (auto: channels-last when the last axis is 1, 3 or 4 channels, as tf2onnx "
                   "files); the bundle takes channels-first pixels either way.")
@click.option("--force", is_flag=True, help="Replace an existing bundle in --out.")
@click.option("--inpainter", "inpainter_path", type=click.Path(path_type=Path), default=None,
              help="Also export this inpainter checkpoint (xaisdk train inpainter) as inpainter.onnx.")
@click.option("--explaingan", "explaingan_path", type=click.Path(path_type=Path), default=None,
              help="Also export this ExplainGAN checkpoint (xaisdk train explaingan; it has its own binary classifier).")
@click.option("--exaggeration", "exaggeration_path", type=click.Path(path_type=Path), default=None,
              help="Also export this Progressive Exaggeration checkpoint (xaisdk train exaggeration) of the same classifier.")
@_clean_errors
def export_command(model_path: Path | None, factory: str | None, weights_path: Path | None, out_dir: Path,
                   input_shape: str | None, classes_path: Path | None, mean: str | None, std: str | None, resize: str,
                   resize_shorter_to: int | None, channel_order: str, opset: int, batch: int | None, layout: str,
                   force: bool, inpainter_path: Path | None, explaingan_path: Path | None,
                   exaggeration_path: Path | None) -> None:
    """Export a model to an ONNX bundle: classifier, its input-gradient and DeepLIFT graphs, the GANMEX
    generator, the inpainter / ExplainGAN / Exaggeration graphs when given, and manifest.json, each verified
    (against torch, or for an ONNX file against the file itself) before the bundle is written."""
    if (model_path is None) == (factory is None):
        raise click.ClickException("give exactly one of --model FILE or --factory module:function")
    user_options = _user_model_options(input_shape, classes_path, mean, std, resize, resize_shorter_to, channel_order)
    if model_path is not None and model_path.suffix.lower() == ".onnx":
        from xaisdk.deploy.onnx_intake import export_onnx_classifier

        if inpainter_path or explaingan_path or exaggeration_path or batch is not None or opset != 17:
            raise click.ClickException("an ONNX file is exported as it is: --batch, --opset, --inpainter, --explaingan "
                                       "and --exaggeration apply to torch models")
        report = export_onnx_classifier(model_path, out_dir, force=force, layout=layout, **user_options)
        reference = "the ONNX file"
    else:
        from xaisdk.deploy.export import export_bundle
        from xaisdk.deploy.torch_intake import load_torch_classifier

        if layout != "auto":
            raise click.ClickException("--layout applies to ONNX files; a torch model's input is channels-first")
        plain = factory is None and weights_path is None and not any(v is not None for v in user_options.values())
        model = model_path if plain else load_torch_classifier(model_path, factory=factory, weights=weights_path,
                                                                **user_options)
        report = export_bundle(model, out_dir, opset=opset, batch=batch, force=force, inpainter=inpainter_path,
                               explaingan=explaingan_path, exaggeration=exaggeration_path)
        reference = "torch"
    for name, size in report.files.items():
        click.echo(f"  {name:<24} {size / 1e6:7.2f} MB")
    checks = ", ".join(f"{k} {v:.1e}" for k, v in report.checks.items())
    click.echo(f"verified against {reference} ({checks})")
    if report.deeplift_unavailable:
        click.echo(f"no DeepLIFT graph: {report.deeplift_unavailable}")
    for note in report.recovered:
        click.echo(note)
    if report.kept:
        click.echo(f"kept what was not part of the old bundle: {', '.join(report.kept)}")
    click.echo(f"wrote {out_dir} ({report.total_bytes / 1e6:.1f} MB) in {report.seconds:.1f} s")


@main.command("explain")
@click.option("--bundle", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="A bundle folder (xaisdk export), or a .pt checkpoint to run with torch.")
@click.option("--input", "inputs", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Image file (PNG, JPEG...) of the model's size, or any size when the bundle has a resize policy; "
                   "repeatable.")
@click.option("--target", default=None, help="The class B of 'why A and not B' (index, name or 'runner-up'); omit for "
                                             "one-vs-all.")
@click.option("--source", default=None, help="The class A (default: the prediction).")
@click.option("--method", default="ig", show_default=True,
              type=click.Choice(["ig", "deeplift", "deepshap", "occlusion", "gradient", "grad_x_input"]))
@click.option("--baseline", default=None, help="'ganmex' (default with --target when the bundle has a generator), 'zero' "
                                               "(the other default: the black image), 'uniform', 'blur' or a number.")
@click.option("--steps", default="auto", show_default=True,
              help="Integration steps for ig: 'auto' (as many per image as bring the completeness error within "
                   "--tolerance of the score gap, at most 512) or a number.")
@click.option("--tolerance", default=None, type=float,
              help="With --steps auto: the completeness error allowed, relative to |S(x) - S(baseline)|.  [default: 0.01]")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for PNGs and explanation.json.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "onnxruntime", "torch", "tensorrt", "torch-cuda"]),
              help="auto: bundles on ONNX Runtime, checkpoints on torch; tensorrt / torch-cuda need an NVIDIA GPU.")
@click.option("--force", is_flag=True, help="Write into --out even if it holds files.")
@_clean_errors
def explain_command(bundle_path: Path, inputs: tuple[Path, ...], target: str | None, source: str | None, method: str,
                    baseline: str | None, steps: str, tolerance: float | None, out_dir: Path, backend: str,
                    force: bool) -> None:
    """Explain images with a bundle: attribution maps as PNG and JSON (runs without torch)."""
    import json

    import numpy as np

    from xaisdk.explainer import Explainer
    from xaisdk.runtime.images import load_image, save_attribution_png, save_image_png
    from xaisdk.runtime.preprocessing import fit_images

    _refuse_overwrite(out_dir, force, "output folder")
    explainer = Explainer.load(bundle_path, backend=backend)
    shape, value_range = explainer.backend.input_shape, explainer.backend.value_range
    pipeline = getattr(explainer.backend, "preprocessing", None)
    any_size = pipeline is not None and pipeline.resize != "none"
    images = [load_image(path, shape, value_range, any_size=any_size) for path in inputs]
    stems = [path.stem for path in inputs]
    if len(set(stems)) != len(stems):
        raise click.ClickException("--input: two files share a name; their outputs would overwrite each other")
    generated = explainer.backend.has_generator and target is not None
    chosen_baseline = baseline if baseline is not None else ("ganmex" if generated else "zero")
    options: dict = {}
    if method == "ig":
        options["n_steps"] = _steps_arg(steps)
        if tolerance is not None:
            options["tolerance"] = tolerance
    elif tolerance is not None:
        raise click.ClickException("--tolerance: applies to --method ig with --steps auto")
    # Explain every image before writing anything, so that a bad input leaves no half-written output folder.
    explanations = []
    for path, image in zip(inputs, images):
        try:
            explanations.append(explainer.explain(
                image, _class_arg(target), source=_class_arg(source), method=method,
                baseline=None if method in ("gradient", "grad_x_input") else _number_or_name(chosen_baseline), **options))
        except InputError as err:
            raise InputError(f"{path}: {err}" if len(inputs) > 1 else str(err)) from None
    records = []
    for path, image, e in zip(inputs, images, explanations):
        shown = image if pipeline is None else fit_images(image, shape, pipeline)[0][0]  # the model's frame, as the map
        save_image_png(shown, out_dir / f"{path.stem}_input.png", value_range)
        save_attribution_png(e.attributions, out_dir / f"{path.stem}_attribution.png")
        if e.baseline is not None and np.ndim(e.baseline) == len(shape):
            save_image_png(e.baseline, out_dir / f"{path.stem}_baseline.png", value_range)
        record = {"input": str(path), **e.to_dict(explainer.class_names)}
        records.append(record)
        delta = "" if e.convergence_delta is None else f", completeness error {e.convergence_delta:+.2e}"
        if e.n_steps is not None:
            delta += f", {e.n_steps} path points" + ("" if e.converged in (None, True) else " (tolerance not reached)")
        click.echo(f"{path.name}: {method} of S[{explainer.class_names[e.source]}] - "
                   f"{'S[' + explainer.class_names[e.target] + ']' if e.target is not None else '0'} = {e.score:.3f}{delta}")
    meta = {"bundle": str(bundle_path), "backend": explainer.backend.name, "method": method,
            "baseline": chosen_baseline, "class_names": list(explainer.class_names), "explanations": records}
    (out_dir / "explanation.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    click.echo(f"wrote {out_dir}")


@main.command("explain-dataset")
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path), default=None, help="An exported bundle folder.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="A .pt checkpoint run with torch (instead of --bundle).")
@click.option("--input", "input_spec", required=True,
              help="A folder of images, of .parquet or of .npz files, or a glob such as 'data/*.parquet'.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder (results/, errors/, job.json, summary.json); rerunning continues it.")
@click.option("--method", default="ig", show_default=True,
              type=click.Choice(["ig", "deeplift", "deepshap", "occlusion", "gradient", "grad_x_input"]))
@click.option("--baseline", default="ganmex", show_default=True, help="'ganmex', 'zero', 'uniform', 'blur' or a number.")
@click.option("--target", default="runner-up", show_default=True, help="'runner-up', or a class index or name.")
@click.option("--steps", default=200, show_default=True, help="Integration steps for ig.")
@click.option("--address", default=None, help="Join this Ray cluster ('auto', 'ray://host:10001').  [default: start one here]")
@click.option("--actors", default=None, type=int, help="Explainers in the pool.  [default: CPUs / --cpus-per-actor]")
@click.option("--batch-size", default=64, show_default=True, help="Images per Explainer call.")
@click.option("--shard-size", default=256, show_default=True, help="Inputs per shard (one output file each).")
@click.option("--cpus-per-actor", default=1.0, show_default=True, help="CPUs each actor reserves (its ONNX Runtime threads).")
@click.option("--num-gpus-per-actor", default=0.0, show_default=True, help="GPUs each actor reserves (0.5: two per GPU).")
@click.option("--thumbnails", is_flag=True, help="Also write a PNG of every attribution map under OUT/thumbnails/.")
@_clean_errors
def explain_dataset_command(bundle_path: Path | None, model_path: Path | None, input_spec: str, out_dir: Path, method: str,
                            baseline: str, target: str, steps: int, address: str | None, actors: int | None,
                            batch_size: int, shard_size: int, cpus_per_actor: float, num_gpus_per_actor: float,
                            thumbnails: bool) -> None:
    """Explain every image of a dataset on Ray Data: Parquet results per shard, resumable, each image once."""
    from xaisdk.cluster.dataset_job import DatasetJob, run_dataset_job

    if (model_path is None) == (bundle_path is None):
        raise click.ClickException("give exactly one of --bundle (an exported folder) or --model (a .pt checkpoint)")
    job = DatasetJob(str(bundle_path or model_path), input_spec, str(out_dir), method=method,
                     baseline=_number_or_name(baseline), target=target if target == "runner-up" else _class_arg(target),
                     n_steps=steps, batch_size=batch_size, shard_size=shard_size, thumbnails=thumbnails)
    summary = run_dataset_job(job, address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                              gpus_per_actor=num_gpus_per_actor, progress=sys.stderr.isatty())
    click.echo(summary.text())
    if summary.errors_total:
        click.echo(f"{summary.errors_total} inputs could not be explained: see {out_dir / 'errors'}")
    click.echo(f"wrote {out_dir}")


@main.command("serve")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all interfaces).")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--name", default=None, help="Model name in the routes.  [default: the bundle folder's name]")
@click.option("--max-batch", default=512, show_default=True, type=int, help="Rows per merged backend call.")
@click.option("--max-wait-ms", default=2.0, show_default=True, type=float,
              help="How long the batcher waits for more rows after the first.")
@click.option("--no-batching", is_flag=True, help="Run each request's backend calls on their own (no merging).")
@click.option("--batch-workers", default=2, show_default=True, type=int, help="Merged backend calls that run at once.")
@click.option("--direct-rows", default=None, type=int,
              help="Calls with this many rows or more skip the batcher.  [default: 64 on a CPU, else --max-batch]")
@click.option("--max-queue", default=64, show_default=True, type=int,
              help="Requests admitted at once; more get 503 with Retry-After.")
@click.option("--timeout-s", default=30.0, show_default=True, type=float, help="Per-request deadline (504 past it).")
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads.  [default: all cores]")
@click.option("--max-body-mb", default=16.0, show_default=True, type=float, help="Largest request body (413 above).")
@click.option("--max-images", default=16, show_default=True, type=int, help="Images per request.")
@click.option("--max-steps", default=1024, show_default=True, type=int, help="Cap on n_steps.")
@click.option("--warmup", default=1, show_default=True, type=int,
              help="Passes over every graph before the server reports ready.")
@_clean_errors
def serve_command(bundle_path: Path, host: str, port: int, name: str | None, max_batch: int, max_wait_ms: float,
                  no_batching: bool, batch_workers: int, direct_rows: int | None, max_queue: int, timeout_s: float,
                  threads: int | None, max_body_mb: float, max_images: int, max_steps: int, warmup: int) -> None:
    """Serve an exported bundle over HTTP: KServe V1 (/v1/models/NAME:predict, :explain) and the Open
    Inference Protocol V2 (/v2/health/*, /v2/models/NAME/infer), Prometheus metrics on /metrics."""
    try:
        from xaisdk.serve import ServerConfig, serve
    except ImportError as err:
        raise InputError(f"xaisdk serve needs the server packages ({err.name}): pip install 'xaisdk[serve,server]'") from None
    if not max_body_mb > 0:
        raise InputError(f"--max-body-mb: expected a positive number, got {max_body_mb}")
    config = ServerConfig(bundle=bundle_path, name=name, max_batch=max_batch, max_wait_ms=max_wait_ms,
                          batching=not no_batching, batch_workers=batch_workers, max_queue=max_queue, timeout_s=timeout_s,
                          threads=threads, direct_rows=direct_rows,
                          max_body_bytes=int(max_body_mb * 2**20), max_images=max_images, max_steps=max_steps,
                          warmup=warmup)
    serve(config, host=host, port=port)


def _names(value: str, what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.ClickException(f"--{what}: give a comma-separated list")
    return items


@main.command("evaluate")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="A GANMEX (or classifier) checkpoint .pt; needed for --metrics roar / randomization.")
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path), default=None,
              help="An exported bundle folder, run on ONNX Runtime (instead of --model).")
@click.option("--dataset", default="digits", show_default=True, help="'digits', 'shapes', an .npz or a folder.")
@click.option("--methods", default="ig,eg,deeplift,occlusion", show_default=True,
              help="Comma-separated: ig, eg, deeplift, occlusion, deepshap.")
@click.option("--baselines", default="zero,mdts,ganmex", show_default=True, help="Comma-separated: zero, mdts, ganmex.")
@click.option("--metrics", "metric_names", default="all", show_default=True,
              help="Comma-separated metric names, or 'all' (see `xaisdk.evaluation.evaluate.METRICS`).")
@click.option("--samples", default=100, show_default=True, help="Test images evaluated (the first ones).")
@click.option("--targets", default="random", show_default=True, type=click.Choice(["random", "runner-up"]),
              help="Target class of each image: a random other class (seeded) or the runner-up.")
@click.option("--ig-steps", default=200, show_default=True)
@click.option("--single-feature-samples", default=50, show_default=True,
              help="Images for faithfulness / monotonicity (784 model calls per image each).")
@click.option("--randomization-ganmex-steps", default=300, show_default=True,
              help="GANMEX training steps per cascade stage.")
@click.option("--roar-methods", default="ig,eg", show_default=True, help="Methods whose columns get ROAR.")
@click.option("--roar-epochs", default=10, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Processes for ROAR's retraining.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the report.")
@click.option("--force", is_flag=True, help="Write into --out even if it holds files.")
@click.option("--ray", "use_ray", is_flag=True, help="Run the per-image work on Ray (same report; pip install 'xaisdk[ray]').")
@click.option("--address", default=None, help="With --ray: join this cluster ('auto', 'ray://host:10001').")
@click.option("--actors", default=None, type=int, help="With --ray: workers in the pool.  [default: the cluster's CPUs]")
@_clean_errors
def evaluate_command(model_path: Path | None, bundle_path: Path | None, dataset: str, methods: str, baselines: str,
                     metric_names: str, samples: int, targets: str, ig_steps: int, single_feature_samples: int,
                     randomization_ganmex_steps: int, roar_methods: str, roar_epochs: int, workers: int, seed: int,
                     out_dir: Path, force: bool, use_ray: bool, address: str | None, actors: int | None) -> None:
    """Score attribution methods x baselines with the papers' metrics: metrics.json, report.md, PNG figures."""
    import shlex

    from xaisdk.data import load_dataset
    from xaisdk.evaluation.evaluate import METRICS, EvaluationConfig, evaluate
    from xaisdk.evaluation.report import write_report
    from xaisdk.explainer import Explainer

    if (model_path is None) == (bundle_path is None):
        raise click.ClickException("give exactly one of --model (a .pt checkpoint) or --bundle (an exported folder)")
    _refuse_overwrite(out_dir, force, "output folder")
    chosen = METRICS if metric_names == "all" else _names(metric_names, "metrics")
    config = EvaluationConfig(methods=_names(methods, "methods"), baselines=_names(baselines, "baselines"),
                              metrics=tuple(chosen), samples=samples, targets=targets, seed=seed, ig_steps=ig_steps,
                              single_feature_samples=single_feature_samples,
                              randomization_ganmex_steps=randomization_ganmex_steps,
                              roar_methods=_names(roar_methods, "roar-methods"), roar_epochs=roar_epochs,
                              roar_workers=workers, progress=sys.stderr.isatty())
    config.validate()
    split = load_dataset(dataset)
    torch_model = None
    if bundle_path is not None:
        explainer = Explainer.load(bundle_path)
    else:
        if not model_path.is_file():
            raise click.ClickException(f"--model {model_path}: no such checkpoint file")
        from xaisdk.models.ganmex import load_model

        torch_model = load_model(model_path)
        explainer = Explainer(torch_model, max_batch=1024)
    if explainer.backend.input_shape != split.test.x.shape[1:]:
        raise click.ClickException(f"--dataset {dataset}: images are {split.test.x.shape[1:]}, the model takes "
                                   f"{explainer.backend.input_shape}")
    if use_ray:
        from xaisdk.cluster.evaluate_ray import evaluate_on_ray

        model = {"bundle": str(bundle_path)} if bundle_path is not None else {"model": str(model_path)}
        result = evaluate_on_ray(explainer, split, config, model=model, dataset=dataset, torch_model=torch_model,
                                 dataset_name=dataset, model_name=str(model_path or bundle_path), address=address, actors=actors)
    elif address is not None or actors is not None:
        raise click.ClickException("--address and --actors go with --ray")
    else:
        result = evaluate(explainer, split, config, torch_model=torch_model, dataset_name=dataset,
                          model_name=str(model_path or bundle_path))
    command = "xaisdk " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_report(result, out_dir, command)
    click.echo((out_dir / "report.md").read_text())
    for path in paths.values():
        click.echo(f"wrote {path}")


def _ints(value: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _names(value, what))
    except ValueError:
        raise click.ClickException(f"--{what}: expected comma-separated integers, got {value!r}") from None


@main.command("evaluate-removal")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="The classifier: a .pt checkpoint (classifier or GANMEX) or an exported bundle folder.")
@click.option("--inpainter", "inpainter_spec", default=None,
              help="The generative filler: an inpainter .pt (xaisdk train inpainter), a bundle folder with an "
                   "inpainter graph, 'telea' / 'ns' (OpenCV), or omit for the one shipped for --dataset.")
@click.option("--dataset", default="digits", show_default=True, help="'digits', 'shapes', an .npz or a folder.")
@click.option("--parts", default="fillers,robustness,localization,deletion", show_default=True,
              help="Comma-separated parts of the study (localization needs ground-truth masks, e.g. shapes).")
@click.option("--samples", default=50, show_default=True, help="Test images evaluated (the first ones).")
@click.option("--held-out", default=50, show_default=True, help="Further test images for the localization threshold.")
@click.option("--targets", default="none", show_default=True, type=click.Choice(["none", "runner-up"]),
              help="'none': one-vs-all on the prediction (the paper); 'runner-up': one-vs-one.")
@click.option("--patch-sizes", default="3,5,7,9,11", show_default=True, help="SP / SP-G patch sizes (robustness).")
@click.option("--lime-segments", default="50,100", show_default=True, help="Two superpixel counts for LIME.")
@click.option("--lime-samples", default=500, show_default=True)
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Seeds of LIME's samples and MP's initialisation.")
@click.option("--mp-steps", default=300, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the report.")
@click.option("--force", is_flag=True, help="Write into --out even if it holds files.")
@_clean_errors
def evaluate_removal_command(model_path: Path, inpainter_spec: str | None, dataset: str, parts: str, samples: int,
                             held_out: int, targets: str, patch_sizes: str, lime_segments: str, lime_samples: int,
                             seeds: str, mp_steps: int, out_dir: Path, force: bool) -> None:
    """Classic vs generative feature removal (SP/SP-G, LIME/LIME-G, MP/MP-G): paper 004's filler table,
    robustness (Table S3), localization (Table 2) and deletion/insertion; report.md, metrics.json, PNGs."""
    import shlex

    from xaisdk.data import load_dataset
    from xaisdk.metrics.removal_report import write_removal_report
    from xaisdk.metrics.removal_study import RemovalStudyConfig, run_removal_study

    _refuse_overwrite(out_dir, force, "output folder")
    config = RemovalStudyConfig(parts=_names(parts, "parts"), samples=samples, held_out=held_out, targets=targets,
                                patch_sizes=_ints(patch_sizes, "patch-sizes"),
                                lime_segments=_ints(lime_segments, "lime-segments"),  # type: ignore[arg-type]
                                lime_samples=lime_samples, seeds=_ints(seeds, "seeds"), mp_steps=mp_steps,
                                progress=sys.stderr.isatty())
    config.validate()
    if not model_path.exists():
        raise click.ClickException(f"--model {model_path}: no such checkpoint file or bundle folder")
    from xaisdk.explainer import Explainer

    backend = Explainer.load(model_path).backend
    inpainter = _load_inpainter(inpainter_spec, dataset, backend.value_range)
    test = load_dataset(dataset).test
    result = run_removal_study(backend, inpainter, test, config, log=lambda message: click.echo(message, err=True))
    command = "xaisdk " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_removal_report(result, out_dir, command)
    click.echo((out_dir / "report.md").read_text())
    for path in paths.values():
        click.echo(f"wrote {path}")


def _load_inpainter(spec: str | None, dataset: str, value_range: tuple[float, float]):
    """An Inpainter from the --inpainter option (see evaluate-removal's help)."""
    from xaisdk.runtime.inpainting import OpenCVInpainter

    if spec in ("telea", "ns"):
        return OpenCVInpainter(spec, value_range=value_range)
    if spec is None:
        from xaisdk.models.inpainter import SHIPPED_INPAINTERS, load_shipped_inpainter

        if dataset not in SHIPPED_INPAINTERS:
            raise click.ClickException(f"--inpainter: no inpainter is shipped for {dataset!r}; train one with "
                                       "`xaisdk train inpainter` or pass 'telea'")
        return load_shipped_inpainter(dataset)
    path = Path(spec)
    if path.is_dir():
        from xaisdk.runtime.onnx_inpainter import OnnxInpainter

        return OnnxInpainter(path)
    from xaisdk.models.inpainter import load_inpainter

    return load_inpainter(path)


def _class_arg(value: str | None) -> int | str | None:
    """A class given on the command line: an index when it is all digits, else a class name."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _steps_arg(value: str) -> int | str:
    """``--steps``: "auto" or an integer (its range is checked by the Explainer)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.ClickException(f"--steps: expected 'auto' or an integer, got {value!r}") from None


def _number_or_name(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


@main.command()
@click.option("--suites", default=",".join(("ig", "occlusion", "aopc", "mdts", "floor")), show_default=True,
              help="Comma-separated: ig, occlusion, aopc, mdts, floor, tolerance (adaptive IG vs Captum to 1% "
                   "completeness on three models; about half an hour on 2 cores), bundle (IG on the exported bundle "
                   "with ONNX Runtime vs torch on the ten 224-px zoo layouts; about 20 minutes on 2 cores).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True,
              help="Folder for <name>.json, <name>.md and <name>.png.")
@click.option("--name", default=None, help="Results file name.  [default: hot_path_<cpu|gpu>_<date>]")
@click.option("--n-images", default=16, show_default=True, help="Images for the latency percentiles.")
@click.option("--repeats", default=3, show_default=True, help="Timed rounds over the images.")
@click.option("--batch", default=64, show_default=True, help="Images per call for the IG throughput.")
@click.option("--quick", is_flag=True, help="A smoke run: few images, one round, MDTS at 1/10 scale.")
@click.option("--force", is_flag=True, help="Replace existing results of the same name.")
@_clean_errors
def bench(suites: str, out_dir: Path, name: str | None, n_images: int, repeats: int, batch: int, quick: bool,
          force: bool) -> None:
    """Time every available implementation of the hot paths against a peer, in one run."""
    from xaisdk.bench import default_name, run_bench
    from xaisdk.bench.report import markdown, write_results

    chosen = tuple(s.strip() for s in suites.split(",") if s.strip())
    if name is not None and (not name or "/" in name or name.startswith(".")):
        raise InputError(f"--name: expected a plain file name, got {name!r}")
    if name is not None and not force and (out_dir / f"{name}.json").exists():
        raise InputError(f"{out_dir / (name + '.json')} exists; pass --force to replace it")
    command = "xaisdk bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "xaisdk bench"
    result = run_bench(chosen, quick=quick, n_images=n_images, repeats=repeats, batch=batch, command=command,
                       progress=sys.stderr.isatty())
    name = name or default_name(result)
    if not force and (out_dir / f"{name}.json").exists():
        raise InputError(f"{out_dir / (name + '.json')} exists; pass --force to replace it or --name another")
    click.echo(markdown(result))
    for path in write_results(result, out_dir, name):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
