"""``atomic_directory`` and the artifact record: torchslim removes only files it wrote."""

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from torchslim._devices import check_device
from torchslim._io import atomic_directory
from torchslim._outdir import RECORD, artifact_files, check_out, remove_artifact
from torchslim.benchmark.isolated import _sigint_ignored
from torchslim.errors import ConfigError, OutputDirectoryError


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _write(out: Path, **files: str) -> None:
    with atomic_directory(out) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


def test_a_new_artifact_records_every_file_it_holds(tmp_path):
    _write(tmp_path / "art", **{"model.bin": "m", "manifest.json": "{}"})
    assert artifact_files(tmp_path / "art") == {"model.bin", "manifest.json", RECORD}
    record = json.loads((tmp_path / "art" / RECORD).read_text())
    assert record["written_by"] == "torchslim"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no staging left over


def test_a_folder_with_user_files_is_refused_and_left_exactly_as_it_was(tmp_path):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    (victim / "sub" / "data.csv").write_text("1,2")
    before = _tree(victim)
    with pytest.raises(OutputDirectoryError, match=r"notes\.txt"):
        _write(victim, **{"model.bin": "m"})
    assert _tree(victim) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


def test_replacing_an_artifact_removes_only_the_files_it_recorded(tmp_path):
    out = tmp_path / "art"
    _write(out, **{"old.bin": "1", "manifest.json": "{}"})
    _write(out, **{"new.bin": "2", "manifest.json": "{}"})
    assert set(_tree(out)) == {"new.bin", "manifest.json", RECORD}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_an_artifact_with_a_user_file_added_is_not_replaced(tmp_path):
    out = tmp_path / "art"
    _write(out, **{"model.bin": "1"})
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    with pytest.raises(OutputDirectoryError, match=r"notes\.txt"):
        _write(out, **{"model.bin": "2"})
    assert _tree(out) == before


def test_a_user_file_appearing_while_the_artifact_is_built_stops_the_replacement(tmp_path):
    out = tmp_path / "art"
    _write(out, **{"model.bin": "1"})
    before = _tree(out)
    with pytest.raises(OutputDirectoryError, match=r"late\.txt"), atomic_directory(out) as tmp:
        (tmp / "model.bin").write_text("2")
        (out / "late.txt").write_text("written by the user meanwhile")
    assert _tree(out) == {**before, "late.txt": b"written by the user meanwhile"}


def test_a_failure_leaves_the_old_artifact_and_no_staging(tmp_path):
    out = tmp_path / "art"
    _write(out, **{"model.bin": "1"})
    before = _tree(out)
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "model.bin").write_text("2")
        raise RuntimeError("killed")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_an_empty_folder_is_filled_in_place(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    inode = here.stat().st_ino
    monkeypatch.chdir(here)
    _write(Path("."), **{"model.bin": "m"})
    assert set(_tree(here)) == {"model.bin", RECORD}
    assert here.stat().st_ino == inode and artifact_files(here) == {"model.bin", RECORD}


def test_a_manifest_from_elsewhere_is_no_torchslim_artifact(tmp_path):
    (tmp_path / RECORD).write_text(json.dumps({"written_by": "someone", "files": []}))
    assert artifact_files(tmp_path) is None
    (tmp_path / RECORD).write_text("not json")
    assert artifact_files(tmp_path) is None


def test_remove_artifact_keeps_what_the_record_does_not_list(tmp_path):
    out = tmp_path / "art"
    _write(out, **{"model.bin": "m"})
    (out / "notes.txt").write_text("mine")
    with pytest.warns(UserWarning, match="kept"):
        remove_artifact(out)
    assert _tree(out) == {"notes.txt": b"mine"}


def test_check_out_refuses_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirectoryError, match="is a file"):
        check_out(tmp_path / "file", overwrite=False)
    with pytest.raises(OutputDirectoryError, match="is a file"):
        check_out(tmp_path / "file" / "below", overwrite=False)
    _write(tmp_path / "art", **{"model.bin": "m"})
    with pytest.raises(OutputDirectoryError, match="--overwrite"):
        check_out(tmp_path / "art", overwrite=False)
    check_out(tmp_path / "art", overwrite=True)
    monkeypatch.chdir(tmp_path / "art")
    with pytest.raises(OutputDirectoryError, match="current directory"):
        check_out(Path("."), overwrite=True)
    with pytest.raises(OutputDirectoryError, match="did not write"):
        check_out(Path("/"), overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only folder")
def test_check_out_refuses_an_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputDirectoryError, match="cannot write"):
        check_out(locked / "out", overwrite=False)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_check_out_refuses_a_filesystem_that_takes_no_folders():
    with pytest.raises(OutputDirectoryError, match="cannot write in /proc"):
        check_out(Path("/proc/torchslim-out"), overwrite=False)


def test_check_device_names_the_value_and_what_is_allowed():
    assert check_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"'gpu' is not a device; use cpu, cuda"):
        check_device("gpu")


def test_check_device_says_when_cuda_is_missing():
    import torch

    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ConfigError, match="CUDA is not available on this machine"):
            check_device("cuda")


def test_a_worker_started_by_the_benchmark_ignores_ctrl_c():
    """A terminal sends Ctrl-C to the whole process group; the workers must not react."""
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=signal.raise_signal, args=(signal.SIGINT,))
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with _sigint_ignored():
            worker.start()
        worker.join()
        assert worker.exitcode == 0  # with SIGINT not ignored: KeyboardInterrupt, exit code 1
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored here
    finally:
        signal.signal(signal.SIGINT, before)  # pytest run in the background starts with SIG_IGN
