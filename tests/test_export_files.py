"""Export and checkpoint files: nothing lost, nothing left.

- ``export --force`` killed (SIGKILL) at random points: ``out`` always holds a complete bundle and
  the next run leaves no staging folder; every half-done state of the two-rename replacement (used
  where the file system cannot swap folders) is finished or undone by the next run;
- ``--force`` keeps the files that are not part of the bundle (notes, the TensorRT engine cache);
- a full disk, a read-only file system and a file where a folder is expected give one clean line
  and exit status 1 (CLI), :class:`~xaisdk.errors.OutputError` (library), and leave no debris;
- the temporary file of a checkpoint save killed mid-write is removed by the next save or resume,
  and the same rule holds for every atomic writer (engines, PNGs, ONNX graphs).

Full and read-only file systems are real ones: a small tmpfs and a read-only bind mount, made in a
private mount namespace (``unshare --mount``; as a non-root user with ``--user --map-root-user``),
so the test needs no root and changes nothing outside its own process. Where namespaces are not
available that test is skipped and says why. ``chmod`` is not used: the tests may run as root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_cli_deploy import assert_clean_failure

from xaisdk.cli import main
from xaisdk.deploy.export import export_bundle, recover_bundle_folder
from xaisdk.errors import InputError, OutputError
from xaisdk.models import Classifier, build_classifier, load_shipped_classifier, save_classifier
from xaisdk.models.checkpoint import atomic_torch_save, weights_hash
from xaisdk.runtime.atomic_files import LEGACY_STALE_SECONDS, exchange_paths, remove_stale_temps
from xaisdk.runtime.bundle import read_bundle
from xaisdk.runtime.engines import engine_cache_key, engine_path, load_cached_engine, write_engine
from xaisdk.runtime.images import save_attribution_png
from xaisdk.train._resume import resumable_state

REPO = Path(__file__).resolve().parents[1]
NAMES = {"a": ("a", "b", "c"), "b": ("x", "y", "z")}

# The models and the export loop, shared by this file and the subprocesses it kills.
MODELS = r'''
import torch
from torch import nn
from xaisdk.models import Classifier

class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))

class NormNet(nn.Module):
    """Conv + LayerNorm + ReLU (normalization across features): gradient graphs but no DeepLIFT graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm([4, 5, 5])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(self.relu(self.norm(self.conv(x))).flatten(1))

def tiny(which, module_type=SmallCNN):
    torch.manual_seed(0 if which == "a" else 1)
    names = ("a", "b", "c") if which == "a" else ("x", "y", "z")
    return Classifier(module_type().eval(), "tiny", {}, names, (1, 10, 10))
'''
_space: dict = {}
exec(MODELS, _space)  # the same source the subprocesses run
tiny, NormNet = _space["tiny"], _space["NormNet"]


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its content)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def add_user_files(out: Path, plans: int = 0) -> dict[str, str]:
    """A user's notes and a TensorRT engine cache beside the bundle in ``out``; returns their contents."""
    (out / "NOTES.txt").write_text("deployed 2024-05-01 on the H200 fleet\n")
    (out / ".keep").write_text("")
    key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", graph_sha(out), 8)
    write_engine(engine_path(out, "classifier", key), b"a plan", key, "classifier", {"x": ((1, 1, 10, 10),) * 3})
    for i in range(plans):  # many files: linking and deleting them makes the replacement take a while
        (out / "engines" / f"extra_{i:04d}.plan").write_bytes(bytes([i % 256]) * 64)
    return {k: v for k, v in tree(out).items() if k in ("NOTES.txt", ".keep") or k.startswith("engines/")}


def graph_sha(out: Path) -> str:
    """The sha256 of the bundle's classifier graph, as its manifest records it."""
    return json.loads((out / "manifest.json").read_text())["files"]["classifier.onnx"]["sha256"]


def class_names(out: Path) -> tuple[str, ...]:
    return read_bundle(out).class_names


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two complete tiny bundles (class names a,b,c and x,y,z), exported once, copied by the tests."""
    root = tmp_path_factory.mktemp("bundles")
    for which in "ab":
        export_bundle(tiny(which), root / which)
    return root


def place(bundles: Path, which: str, where: Path) -> Path:
    shutil.copytree(bundles / which, where)
    return where


def can_exchange(folder: Path) -> bool:
    """Whether this file system swaps two folders in one step (then ``out`` is never missing, even mid-swap)."""
    a, b = folder / "probe_a", folder / "probe_b"
    a.mkdir()
    b.mkdir()
    try:
        return exchange_paths(a, b)
    finally:
        a.rmdir()
        b.rmdir()


# --------------------------------------------------------------------------- SIGKILL at random points

KILL_LOOP = MODELS + r'''
import os, signal, sys, time
import numpy as np
from xaisdk.deploy.export import export_bundle

out, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
models = [tiny("a"), tiny("b")]

def export_forever():
    torch.set_num_threads(1)
    try:
        for i in range(10 ** 6):
            export_bundle(models[i % 2], out, force=True)
    finally:
        os._exit(0)

# This process imports only; each round forks a child that exports the two models in turn until it is
# killed at a random moment, so the rounds share one interpreter start-up.
for round_ in range(rounds):
    if sys.stdin.readline().strip() != "go":
        break
    pid = os.fork()
    if pid == 0:
        export_forever()
    delay = float(rng.uniform(0.02, 0.9))
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print(f"killed {pid} after {delay:.3f} s", flush=True)
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_random_points_never_loses_the_bundle_nor_leaves_staging(bundles, tmp_path):
    out = place(bundles, "a", tmp_path / "parent" / "bundle")
    user = add_user_files(out, plans=200)
    atomic_swap = can_exchange(tmp_path)
    script = tmp_path / "kill_loop.py"
    script.write_text(KILL_LOOP)
    rounds, left_over = 10, 0
    worker = subprocess.Popen([sys.executable, str(script), str(out), str(rounds), "0"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        for _ in range(rounds):
            worker.stdin.write("go\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            assert line.startswith("killed"), line
            if atomic_swap:  # the folders were exchanged in one step: a complete bundle even before any recovery
                assert class_names(out) in NAMES.values()
            notes = recover_bundle_folder(out)
            left_over += bool(notes)
            assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"], notes
            assert class_names(out) in NAMES.values()  # read_bundle checks every file's sha256
            assert {k: v for k, v in tree(out).items() if k in user} == user  # the user's files, intact
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
    assert left_over >= 1  # the kills did leave staging folders, and they were removed
    report = export_bundle(tiny("b"), out, force=True)
    assert sorted(report.kept) == [".keep", "NOTES.txt", "engines"] and report.recovered == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]


# --------------------------------------------------------------------------- every state of the two-rename swap


def swap_name(out: Path, kind: str, pid: int, token: str = "0123456789ab") -> Path:
    return out.with_name(f".{out.name}.{kind}-{pid}-{token}")


def test_killed_between_the_two_renames_finishes_the_replacement(bundles, tmp_path):
    """``out`` moved aside, the verified new bundle not yet in place: the next export installs it."""
    out, pid = tmp_path / "bundle", dead_pid()
    place(bundles, "a", swap_name(out, "old", pid))
    place(bundles, "b", swap_name(out, "new", pid))
    report = export_bundle(tiny("a"), out, force=True)
    assert report.recovered[0].startswith(f"{out}: finished replacing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert class_names(out) == NAMES["a"]


@pytest.mark.parametrize("state", ["old only", "old, new deleted half", "legacy old"])
def test_killed_with_only_the_old_bundle_aside_puts_it_back(bundles, tmp_path, state):
    out, pid = tmp_path / "bundle", dead_pid()
    if state == "legacy old":  # named by the previous version (mkdtemp, the bundle one level down), hours ago
        old = tmp_path / ".bundle.old-k3j_9x2a"
        place(bundles, "a", old / "bundle")
        hours_ago = time.time() - 2 * LEGACY_STALE_SECONDS
        os.utime(old, (hours_ago, hours_ago))
    else:
        place(bundles, "a", swap_name(out, "old", pid))
    if state == "old, new deleted half":  # a staging folder of another, unfinished run
        place(bundles, "b", swap_name(out, "new", pid, "fedcba987654"))
        (swap_name(out, "new", pid, "fedcba987654") / "manifest.json").unlink()
    notes = recover_bundle_folder(out)
    assert notes[0] == f"{out}: put back the previous bundle that an interrupted export had moved aside"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert class_names(out) == NAMES["a"]


@pytest.mark.parametrize("kind", ["new", "old"])
def test_leftovers_beside_a_complete_bundle_are_removed(bundles, tmp_path, kind):
    """Killed while staging (``new``) or while deleting the replaced bundle (``old``): ``out`` is complete."""
    out, pid = place(bundles, "b", tmp_path / "bundle"), dead_pid()
    half = place(bundles, "a", swap_name(out, kind, pid))
    (half / "classifier.onnx").unlink()
    with pytest.raises(InputError, match="already there"):
        export_bundle(tiny("a"), out)  # recovery runs even when the export itself is refused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert class_names(out) == NAMES["b"]


def test_folders_of_a_running_export_are_left_alone(bundles, tmp_path):
    """Another process exporting to the same folder: its staging and parked folders are not touched."""
    out = tmp_path / "bundle"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        place(bundles, "a", swap_name(out, "old", other.pid))
        place(bundles, "b", swap_name(out, "new", other.pid))
        legacy = tmp_path / ".bundle.new-a1b2c3d4"  # a previous version's, modified just now
        legacy.mkdir()
        assert recover_bundle_folder(out) == []
        assert len(list(tmp_path.iterdir())) == 3 and not out.exists()
    finally:
        other.kill()
        other.wait()
    recover_bundle_folder(out)  # its process has ended now: the swap is finished
    assert class_names(out) == NAMES["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.new-a1b2c3d4", "bundle"]  # young legacy: kept


# --------------------------------------------------------------------------- --force keeps what is not the bundle's


def test_force_keeps_user_files_and_engines_are_keyed_by_the_new_graphs(bundles, tmp_path):
    out = place(bundles, "a", tmp_path / "bundle")
    user = add_user_files(out)
    old_sha = graph_sha(out)
    report = export_bundle(tiny("b"), out, force=True)
    assert sorted(report.kept) == [".keep", "NOTES.txt", "engines"]
    assert {k: v for k, v in tree(out).items() if k in user} == user
    bundle = read_bundle(out)
    assert bundle.class_names == NAMES["b"] and graph_sha(out) != old_sha
    assert set(os.listdir(out)) == {*report.files, ".keep", "NOTES.txt", "engines"}
    # the kept plan was built for the old graph: it is never served for the new one
    new_key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", graph_sha(out), 8)
    assert load_cached_engine(engine_path(out, "classifier", new_key), new_key) is None
    old_key = engine_cache_key("NVIDIA H200", "9.0", "10.13.0.35", old_sha, 8)
    assert load_cached_engine(engine_path(out, "classifier", old_key), old_key) == b"a plan"


def test_force_through_a_symbolic_link_replaces_the_folder_it_points_to(bundles, tmp_path):
    """``--out`` a link to the bundle folder: the link stays a link, the folder gets the new bundle."""
    real = place(bundles, "a", tmp_path / "releases" / "current")
    (tmp_path / "bundle").symlink_to(real, target_is_directory=True)
    export_bundle(tiny("b"), tmp_path / "bundle", force=True)
    assert (tmp_path / "bundle").is_symlink() and class_names(real) == NAMES["b"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["current"]


def test_force_refuses_a_user_file_with_a_name_the_new_bundle_writes(tmp_path):
    """The old bundle (layer norm) has no DeepLIFT graph; a user's file of that name would be replaced."""
    out = tmp_path / "bundle"
    export_bundle(tiny("a", NormNet), out)
    assert not (out / "deeplift_grad.onnx").exists()
    (out / "deeplift_grad.onnx").write_bytes(b"my own graph")
    before = tree(out)
    with pytest.raises(InputError, match=r"deeplift_grad\.onnx is not part of the bundle there"):
        export_bundle(tiny("b"), out, force=True)
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny classifier checkpoint (12 x 12 inputs, about 60 KB of graphs) for the command line."""
    config = dict(in_channels=1, image_size=12, num_classes=3, channels=(4, 4), hidden=64)
    torch.manual_seed(0)
    model = build_classifier("mnist_cnn", **config).eval()
    return save_classifier(tmp_path_factory.mktemp("ckpt") / "tiny.pt",
                           Classifier(model, "mnist_cnn", config, ("a", "b", "c"), (1, 12, 12)))


def run_cli(*args: str):
    """The ``xaisdk`` command, run in this process (stdout and stderr apart)."""
    return CliRunner().invoke(main, list(args), prog_name="xaisdk")


def test_cli_force_reports_what_it_kept_and_refuses_an_unwritable_target(checkpoint, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(checkpoint, out)
    (out / "NOTES.txt").write_text("mine")
    again = run_cli("export", "--model", str(checkpoint), "--out", str(out), "--force")
    assert again.exit_code == 0, again.output
    assert "kept what was not part of the old bundle: NOTES.txt" in again.stdout
    assert (out / "NOTES.txt").read_text() == "mine"
    for blocked in (out / "NOTES.txt" / "b", out / "NOTES.txt" / "deeper" / "b"):
        result = run_cli("export", "--model", str(checkpoint), "--out", str(blocked))
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr == f"Error: cannot write {blocked}: {out / 'NOTES.txt'} is a file, not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# --------------------------------------------------------------------------- write failures of every kind

FULL_DISK = r'''
import contextlib, io, json, os, subprocess, sys
from pathlib import Path
from xaisdk.cli import main
from xaisdk.errors import OutputError
from xaisdk.models import load_shipped_classifier, save_classifier

work, model, bundle, image = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
full, ro = work / "full", work / "ro"
full.mkdir()
ro.mkdir()
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True)
subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)

def cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(list(args), prog_name="xaisdk")
            code = 0
        except SystemExit as stop:
            code = stop.code
    return {"rc": code, "stderr": err.getvalue()}

def fill(path, leave=0):
    with open(path, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"0" * 4096)
    os.truncate(path, max(0, os.path.getsize(path) - leave))

def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))

report = {}
fill(full / "filler", leave=24576)  # room for the first graph (15 KB) of the bundle, not the second
report["export_full"] = cli("export", "--model", model, "--out", str(full / "bundle"))
report["export_full"]["left"] = listing(full)
report["export_ro"] = cli("export", "--model", model, "--out", str(ro / "bundle"))
report["export_ro"]["left"] = listing(ro)
fill(full / "filler2")
report["explain_full"] = cli("explain", "--bundle", bundle, "--input", image, "--out", str(full / "why"))
report["explain_full"]["left"] = [n for n in listing(full) if n.endswith(".tmp")]
try:
    save_classifier(full / "clf.pt", load_shipped_classifier("digits"))
    report["checkpoint_full"] = "saved"
except OutputError as err:
    report["checkpoint_full"] = [str(err), err.errno, listing(full)]
print(json.dumps(report))
'''


def namespace_prefix() -> list[str] | None:
    """``unshare`` arguments for a private mount namespace in which this user may mount, or None."""
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return None
    prefix = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    probe = subprocess.run([*prefix, "mount", "-t", "tmpfs", "tmpfs", "/tmp"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def test_full_disk_and_read_only_file_system_give_one_clean_line(bundles, checkpoint, tmp_path):
    prefix = namespace_prefix()
    if prefix is None:
        pytest.skip("no private mount namespace here (unshare --mount): a real full or read-only file system "
                    "cannot be made without changing the machine's mounts")
    image = tmp_path / "digit.png"
    save_attribution_png(np.zeros((10, 10)), image, scale=1)  # gray-scale 10x10, the tiny bundle's input
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    (tmp_path / "work").mkdir()
    run = subprocess.run([*prefix, sys.executable, str(script), str(tmp_path / "work"), str(checkpoint), str(bundles / "a"),
                          str(image)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    for case, reason in [("export_full", "No space left on device"), ("export_ro", "Read-only file system"),
                         ("explain_full", "No space left on device")]:
        result = subprocess.CompletedProcess([], report[case]["rc"], "", report[case]["stderr"])
        assert result.returncode == 1, (case, result.stderr)
        assert_clean_failure(result, reason)
    assert report["export_full"]["left"] == ["filler"]  # no staging folder, no half bundle
    assert report["export_ro"]["left"] == []
    assert report["explain_full"]["left"] == []
    message, code, left = report["checkpoint_full"]
    assert message.startswith("cannot write ") and message.endswith("clf.pt: No space left on device")
    assert code == 28 and [name for name in left if name.endswith(".tmp")] == []


def test_file_where_a_folder_is_expected_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="file, not a folder"):
        export_bundle(tiny("a"), blocker / "sub" / "bundle")
    with pytest.raises(OutputError, match=r"cannot write .*run\.pt: Not a directory"):
        atomic_torch_save({"step": 1}, blocker / "sub" / "run.pt")
    with pytest.raises(InputError, match="cannot create directory"):
        save_attribution_png(np.zeros((2, 2)), blocker / "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --------------------------------------------------------------------------- orphan temporary files

KILLED_SAVE = r'''
import os, sys, threading, time, torch
from xaisdk.models.checkpoint import atomic_torch_save

class Stall:
    """Pickled while torch.save writes: stops the save half way, where the process is then killed."""

    def __reduce__(self):
        os.write(1, b"mid-write\n")  # one write: the two threads' lines do not interleave
        time.sleep(120)
        return (int, ())

def save_twice(path):
    atomic_torch_save({"version": 1}, path)
    atomic_torch_save({"version": 2, "weights": torch.ones(1000), "stall": Stall()}, path)

for path in sys.argv[1:]:
    threading.Thread(target=save_twice, args=(path,), daemon=True).start()
time.sleep(120)
'''


def test_checkpoint_save_killed_mid_write_is_cleaned_by_the_next_save_and_by_resume(tmp_path):
    script = tmp_path / "killed_save.py"
    script.write_text(KILLED_SAVE)
    paths = [tmp_path / "resume" / "run.pt", tmp_path / "save" / "run.pt"]
    worker = subprocess.Popen([sys.executable, str(script), *map(str, paths)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    assert [worker.stdout.readline().strip() for _ in paths] == ["mid-write"] * 2
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    for path in paths:
        names = sorted(p.name for p in path.parent.iterdir())
        assert len(names) == 2 and names[0].startswith(f".run.pt.{worker.pid}.") and names[0].endswith(".tmp")
        assert names[1] == "run.pt" and torch.load(path, weights_only=True) == {"version": 1}  # intact

    clf = load_shipped_classifier("digits")  # resume: the checks pass, then the orphan goes
    state = {"classifier_hash": weights_hash(clf), "step": 3}
    config = type("Config", (), {"seed": 0})()
    resumable_state({"training_state": state}, paths[0], {"seed": 0}, config, ["seed"], clf)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["run.pt"]

    atomic_torch_save({"version": 3}, paths[1])  # the next save
    assert sorted(p.name for p in paths[1].parent.iterdir()) == ["run.pt"]
    assert torch.load(paths[1], weights_only=True) == {"version": 3}


def test_every_atomic_writer_removes_dead_writers_temporaries_and_only_those(tmp_path):
    dead, now = dead_pid(), time.time()
    targets = {
        "checkpoint": (tmp_path / "run.pt", lambda p: atomic_torch_save({"k": 1}, p)),
        "png": (tmp_path / "map.png", lambda p: save_attribution_png(np.ones((2, 2)), p)),
        "engine": (tmp_path / "engines" / "classifier_b8_abababababab.plan",
                   lambda p: write_engine(p, b"plan", engine_cache_key("G", "9.0", "10.1", "ab" * 32, 8), "classifier",
                                          {"x": ((1, 3), (8, 3), (8, 3))})),
    }
    for target, write in targets.values():
        target.parent.mkdir(parents=True, exist_ok=True)
        orphan = target.with_name(f".{target.name}.{dead}.0123456789ab.tmp")  # killed writer
        legacy_old = target.with_name(f".{target.name}.ab_12cd3.tmp")  # previous version's name, hours old
        legacy_new = target.with_name(f".{target.name}.zz_98yx7.tmp")  # ... written just now: may be live
        live = target.with_name(f".{target.name}.{os.getpid()}.fedcba987654.tmp")  # this process: alive
        other = target.with_name(f".{target.name}x.{dead}.0123456789ab.tmp")  # another target's
        for path in (orphan, legacy_old, legacy_new, live, other):
            path.write_bytes(b"partial")
        os.utime(legacy_old, (now - 2 * LEGACY_STALE_SECONDS,) * 2)
        write(target)
        assert not orphan.exists() and not legacy_old.exists()
        assert legacy_new.exists() and live.exists() and other.exists()
        assert remove_stale_temps(target) == []
