"""Text data from packages: Jane Austen's novels (Debian r-cran-janeaustenr, an R lazy-load
database parsed with `rdata`, no R needed), the Lee news corpus and word-similarity sets (the
gensim wheel's test data, located without importing gensim)."""

from __future__ import annotations

import gzip
import warnings
import zlib
from functools import cache

from torchslim.zoo._assets import debian_file, package_file

GENSIM_DATA = "gensim/test/test_data"
NOVELS = (
    "emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility",
)  # fmt: skip


def _r_object(data: bytes) -> object:
    """One R object from its uncompressed serialization (``rdata`` pulls in pandas: lazy)."""
    import rdata

    with warnings.catch_warnings():  # rdata guesses the format from a file name we do not have
        warnings.simplefilter("ignore", UserWarning)
        return rdata.conversion.convert(rdata.parser.parse_data(data))


@cache
def austen_novels() -> dict[str, str]:
    """The six novels as text (lines joined with newlines), keyed by the package's names.

    ``Rdata.rdx`` (gzip) indexes each variable as (offset, length) into ``Rdata.rdb``, where
    each object is a 4-byte length followed by a zlib-compressed R serialization.
    """
    index = _r_object(gzip.decompress(debian_file("janeaustenr/Rdata.rdx").read_bytes()))
    database = debian_file("janeaustenr/Rdata.rdb").read_bytes()
    novels = {}
    for name, (offset, length) in index["variables"].items():  # type: ignore[index]
        blob = database[int(offset) : int(offset) + int(length)]
        lines = _r_object(zlib.decompress(blob[4:]))
        novels[str(name)] = "\n".join(str(line) for line in lines)  # type: ignore[attr-defined]
    return novels


@cache
def lee_corpus(split: str) -> list[str]:
    """Lee news documents: 'background' (300 documents) or 'test' (the 50 of lee.cor)."""
    files = {"background": "lee_background.cor", "test": "lee.cor"}
    if split not in files:
        raise ValueError(f"split must be one of {sorted(files)}, got {split!r}")
    text = package_file("gensim", f"{GENSIM_DATA}/{files[split]}").read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


@cache
def word_pairs(name: str) -> list[tuple[str, str, float]]:
    """Human-rated word pairs: 'wordsim353' or 'simlex999' as (word, word, score)."""
    files = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
    if name not in files:
        raise ValueError(f"word pair set must be one of {sorted(files)}, got {name!r}")
    pairs = []
    for line in package_file("gensim", f"{GENSIM_DATA}/{files[name]}").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        first, second, score = line.split("\t")[:3]
        pairs.append((first.lower(), second.lower(), float(score)))
    return pairs


def sentences(text: str, min_words: int = 5) -> list[str]:
    """Split running text into sentences of at least ``min_words`` words (on . ! ? + space)."""
    flat = " ".join(text.split())
    found, start = [], 0
    for i, char in enumerate(flat):
        if char in ".!?" and (i + 1 == len(flat) or flat[i + 1] == " "):
            sentence = flat[start : i + 1].strip()
            if len(sentence.split()) >= min_words:
                found.append(sentence)
            start = i + 1
    return found
