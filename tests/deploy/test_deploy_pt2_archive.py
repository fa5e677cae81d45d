"""The torch backend's file form: a PT2 archive is checked before torch.export.load sees it."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from torchslim.deploy.config import DeployError
from torchslim.deploy.torch_backend import check_archive, load


def _archive(path: Path, use_pickle: bool, sample: bytes | None = None) -> Path:
    config = {"config": {"w": {"path_name": "weight_0", "use_pickle": use_pickle}}}
    if sample is None:
        buffer = io.BytesIO()
        torch.save(((torch.zeros(1),), {}), buffer)
        sample = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data/weights/model_weights_config.json", json.dumps(config))
        archive.writestr("m/data/sample_inputs/model.pt", sample)
    return path


def test_plain_archive_passes_the_check(tmp_path: Path) -> None:
    check_archive(_archive(tmp_path / "ok.pt2", use_pickle=False))


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="pickled objects"):
        check_archive(_archive(tmp_path / "bad.pt2", use_pickle=True))


class Payload:
    """An arbitrary object: unpickling it would run code of the file's choosing."""


def test_sample_inputs_that_are_not_tensors_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(Payload(), buffer)
    with pytest.raises(DeployError, match="not plain tensors"):
        check_archive(_archive(tmp_path / "bad.pt2", False, buffer.getvalue()))


def test_not_a_zip_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"garbage")
    with pytest.raises(DeployError, match="not a readable"):
        check_archive(tmp_path / "model.pt2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeployError, match=r"no model\.pt2"):
        load(tmp_path / "empty", {}, 1)
