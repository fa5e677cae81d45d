"""``--out``, ``--overwrite``, ``--device`` and Ctrl-C through the real CLI entry point.

Refusals must come before any work: the step that would do the work is replaced by one that
fails the test, so a late check shows up as that failure instead of a refusal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from torchslim._outdir import RECORD
from torchslim.cli import main

PRUNE = ["prune", "tiny-cnn", "--method", "magnitude", "--target", "sparsity=0.5",
         "--repeats", "3", "--json"]  # fmt: skip
COMMANDS = {
    "prune": PRUNE,
    "quantize": ["quantize", "tiny-cnn", "--scheme", "w8a8", "--repeats", "3"],
    "distill": ["distill", "--teacher", "tiny-bert", "--student-from", "tiny-bert"],
}
WORK = {  # the first step of each command that does real work
    "prune": "torchslim.prune.apply.prune_zoo_model",
    "quantize": "torchslim.quantize.run.run_scheme",
    "distill": "torchslim.distill.run.build_student",
}


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``torchslim ARGS`` run by ``main`` in this process."""
    monkeypatch.setattr(sys, "argv", ["torchslim", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    captured = capsys.readouterr()
    return int(stop.value.code or 0), captured.out, " ".join(captured.err.split())


def _no_work(monkeypatch, command: str) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"{command} started working before refusing --out")

    monkeypatch.setattr(WORK[command], fail)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_with_user_files_is_refused_before_any_work(
    command, tmp_path, monkeypatch, capsys
):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("my notes")
    (victim / "sub" / "data.csv").write_text("1,2,3")
    before = _tree(victim)
    _no_work(monkeypatch, command)
    for extra in ([], ["--overwrite"]):
        code, _, err = _cli(monkeypatch, capsys, *COMMANDS[command], "--out", str(victim), *extra)
        assert code == 2, err
        assert "notes.txt" in err and "sub/" in err and "never removes them" in err
        assert "Traceback" not in err
    assert _tree(victim) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


@pytest.mark.parametrize("command", COMMANDS)
def test_out_that_is_a_file_or_cannot_be_written_is_refused_before_any_work(
    command, tmp_path, monkeypatch, capsys
):
    _no_work(monkeypatch, command)
    (tmp_path / "file").write_text("keep")
    code, _, err = _cli(monkeypatch, capsys, *COMMANDS[command], "--out", str(tmp_path / "file"))
    assert code == 2 and "is a file" in err
    assert (tmp_path / "file").read_text() == "keep"
    if Path("/proc/self").is_dir():  # a filesystem that takes no new folder
        code, _, err = _cli(monkeypatch, capsys, *COMMANDS[command], "--out", "/proc/torchslim")
        assert code == 2 and "cannot write in /proc" in err


def test_current_directory_with_files_is_refused_and_untouched(tmp_path, monkeypatch, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    _no_work(monkeypatch, "prune")
    for out in (".", str(tmp_path), "..", "/"):
        code, _, err = _cli(monkeypatch, capsys, *PRUNE, "--out", out, "--overwrite")
        assert code == 2 and "did not write" in err, (out, err)
    assert _tree(tmp_path) == {"keep.txt": b"mine"}


def test_prune_writes_an_artifact_and_replaces_it_only_with_overwrite(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "pruned"
    code, stdout, err = _cli(monkeypatch, capsys, *PRUNE, "--out", str(out))
    assert code == 0, err
    assert json.loads(stdout)["artifact"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "manifest.json", "model.safetensors"]
    first = _tree(out)
    code, _, err = _cli(monkeypatch, capsys, *PRUNE, "--out", str(out))
    assert code == 2 and "--overwrite" in err
    assert _tree(out) == first
    code, _, err = _cli(monkeypatch, capsys, *PRUNE, "--out", str(out), "--overwrite")
    assert code == 0, err
    assert set(_tree(out)) == set(first)
    (out / "notes.txt").write_text("added by the user")
    code, _, err = _cli(monkeypatch, capsys, *PRUNE, "--out", str(out), "--overwrite")
    assert code == 2 and "notes.txt" in err
    assert (out / "notes.txt").read_text() == "added by the user"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no staging left


def test_out_dot_in_an_empty_directory_writes_there(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(monkeypatch, capsys, *PRUNE, "--out", ".")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        RECORD, "manifest.json", "model.safetensors"
    ]  # fmt: skip
    code, _, err = _cli(monkeypatch, capsys, *PRUNE, "--out", ".", "--overwrite")
    assert code == 2 and "current directory" in err  # never swaps away the folder you are in


def test_train_refuses_a_folder_it_did_not_make(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("torchslim.train.run.train_zoo_model", _never)
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = _cli(monkeypatch, capsys, "train", "fashion-cnn", "--out", str(tmp_path))
    assert code == 2 and "notes.txt" in err
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "model.safetensors").write_text("an earlier run")
    code, _, err = _cli(monkeypatch, capsys, "train", "fashion-cnn", "--out", str(tmp_path))
    assert code == 2 and "--resume" in err and "--overwrite" in err


def _never(*args, **kwargs):
    raise AssertionError("work started before the options were checked")


@pytest.mark.parametrize("device", ["gpu", "cuda:99"])
@pytest.mark.parametrize("command", ["evaluate", "distill", "train"])
def test_a_bad_device_is_one_error_before_any_work(command, device, tmp_path, monkeypatch, capsys):
    import torchslim.train.run

    monkeypatch.setattr(sys.modules["torchslim.evaluate"], "evaluate", _never)
    monkeypatch.setattr(torchslim.train.run, "train_zoo_model", _never)
    _no_work(monkeypatch, "distill")
    args = {
        "evaluate": ["evaluate", "tiny-cnn"],
        "distill": [*COMMANDS["distill"], "--out", str(tmp_path / "d")],
        "train": ["train", "fashion-cnn", "--out", str(tmp_path / "t")],
    }[command]
    code, _, err = _cli(monkeypatch, capsys, *args, "--device", device)
    assert code == 2, err
    assert f"--device '{device}'" in err and "Traceback" not in err
    assert "cuda" in err and "cpu" in err  # what is allowed, or why CUDA cannot be used
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _children(pid: int) -> list[str]:
    """Child process ids of every thread of ``pid``."""
    children: list[str] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += (task / "children").read_text().split()
    return children


def _ignores_sigint(pid: int | str) -> bool:
    """Whether process ``pid`` ignores SIGINT (bit 2 of SigIgn in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


def _is_benchmark_worker(pid: str) -> bool:
    """A ``spawn`` worker (not multiprocessing's resource tracker, which ignores SIGINT too)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _worker_runs_and_parent_handles_ctrl_c(pid: int) -> bool:
    workers = [child for child in _children(pid) if _is_benchmark_worker(child)]
    return any(_ignores_sigint(child) for child in workers) and not _ignores_sigint(pid)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="watches workers through /proc")
def _ctrl_c_as_in_a_terminal() -> None:
    """A shell without job control starts background jobs with SIGINT ignored, and a child
    inherits that: give the command the terminal's Ctrl-C whatever ran this test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_quantize_is_one_line_exit_130_and_leaves_nothing(tmp_path):
    """Ctrl-C once the deploy race's worker processes run: the terminal sends SIGINT to the
    whole process group, as ``killpg`` does here."""
    tmp, out = tmp_path / "tmp", tmp_path / "art"
    tmp.mkdir()
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(src)}
    command = [
        sys.executable,
        "-m",
        "torchslim",
        *COMMANDS["quantize"],
        "--out",
        str(out),
        "--deploy-budget",
        "600",
    ]  # a full race: finalists within 1.5x of the best are re-timed in worker processes
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True, preexec_fn=_ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")))
    reader.start()
    while process.poll() is None and not (
        _worker_runs_and_parent_handles_ctrl_c(process.pid)
        or any(line.startswith("measuring the original") for line in lines)
    ):  # a worker runs (ignoring Ctrl-C) while the parent handles it; or, where this machine's
        # race had one clear winner and so no workers, Ctrl-C lands in the final measurement
        time.sleep(0.005)
    if process.poll() is not None:
        reader.join()
        pytest.fail(f"quantize ended before it could be interrupted: {''.join(lines)}")
    os.killpg(process.pid, signal.SIGINT)
    process.wait()
    reader.join()
    err = "".join(lines)
    assert process.returncode == 130, err
    assert "Traceback" not in err  # the deploy's stage lines, then one line
    assert err.strip().splitlines()[-1] == "interrupted; no half-written output was left behind"
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "tmp"] == []  # no staging
    ours = [p for p in tmp.iterdir() if p.is_dir() and not p.name.startswith("torchinductor_")]
    assert ours == []  # no temporary folders (torch.compile's own cache may stay, as it does)
