"""`xaisdk train ganmex`, run as a user runs it (a subprocess of the installed entry point)."""

from __future__ import annotations

from PIL import Image
from test_cli import xaisdk

from xaisdk.models import load_ganmex, shipped_classifier_path

TINY = ("--steps", "4", "--batch-size", "4", "--generator-channels", "4", "--sample-every", "2",
        "--checkpoint-every", "2")


def test_train_ganmex_writes_checkpoint_samples_and_resumes(tmp_path):
    out = tmp_path / "ganmex.pt"
    result = xaisdk("train", "ganmex", "--dataset", "digits", "--classifier", str(shipped_classifier_path()),
                    "--out", str(out), *TINY)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    model = load_ganmex(out)
    assert model.training["steps_done"] == 4 and model.data == {"name": "digits", "options": {"seed": 0}}
    samples = sorted((tmp_path / "ganmex_samples").glob("*.png"))
    assert [p.name for p in samples] == ["step_000002.png", "step_000004.png"]
    # input column + one column per class
    assert Image.open(samples[0]).size[0] > Image.open(samples[0]).size[1]

    again = xaisdk("train", "ganmex", "--dataset", "digits", "--classifier", str(shipped_classifier_path()),
                   "--out", str(out), *TINY)
    assert again.returncode == 1 and "--force" in again.stderr and "Traceback" not in again.stderr

    resumed = xaisdk("train", "ganmex", "--dataset", "digits", "--classifier", str(shipped_classifier_path()),
                     "--out", str(out), "--resume", "--steps", "6", *TINY[2:])
    assert resumed.returncode == 0, resumed.stderr
    assert load_ganmex(out).training["steps_done"] == 6


def test_train_ganmex_bad_input_gives_clean_errors(tmp_path):
    cases = [
        (["--classifier", str(tmp_path / "nope.pt")], "no such checkpoint"),
        (["--classifier", str(shipped_classifier_path()), "--lambda-sim", "-1"], "lambda_sim"),
        (["--classifier", str(shipped_classifier_path()), "--resume"], "does not exist"),
    ]
    for extra, message in cases:
        result = xaisdk("train", "ganmex", "--dataset", "digits", "--out", str(tmp_path / "g.pt"), *extra)
        assert result.returncode == 1, (extra, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
    shapes = xaisdk("train", "ganmex", "--dataset", "shapes", "--classifier", str(shipped_classifier_path()),
                    "--out", str(tmp_path / "g.pt"), *TINY)
    assert shapes.returncode == 1 and "classifier takes" in shapes.stderr
    assert not (tmp_path / "g.pt").exists()
