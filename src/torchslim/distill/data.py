"""What a student is trained on: the teacher entry's training split, or unlabelled text.

Image classifiers use their labelled training split (never the test split). The sentence encoder
(``minilm``) is distilled on unlabelled text with the teacher's embeddings as targets: sentences
of the six Austen novels and of the Lee background corpus, plus the corpus's most frequent words
as one-word sentences (its WordSim/SimLex metrics embed single words). The evaluation text
(``lee.cor``) and the word-pair lists are never read. Other entries fall back to their
calibration batches with the teacher's outputs as regression targets.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from torchslim.errors import ConfigError
from torchslim.train._batches import Inputs
from torchslim.zoo import ZooEntry, corpora
from torchslim.zoo.text import MiniLM
from torchslim.zoo.vision import ImageClassifier


def unlabelled_texts(words: int = 4000, min_count: int = 3) -> list[str]:
    """Sentences of the Austen novels and the Lee background corpus, then the ``words`` most
    frequent alphabetic words (seen at least ``min_count`` times) as one-word texts."""
    novels = corpora.austen_novels()
    texts = [s for name in sorted(novels) for s in corpora.sentences(novels[name])]
    texts += corpora.sentences(" ".join(corpora.lee_corpus("background")))
    counts = Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()) if len(w) > 1)
    texts += [w for w, n in counts.most_common(words) if n >= min_count]
    return texts


def text_batches(texts: list[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention masks of ``texts`` for MiniLM, padded to ``seq_len``: (N, T)."""
    from torchslim.zoo.text import _encode

    ids, mask = _encode(texts, seq_len)
    return ids, mask


def training_data(
    entry: ZooEntry, subset: int | None = None, seed: int = 0, seq_len: int = 32
) -> tuple[tuple[Inputs, torch.Tensor], str]:
    """``((inputs, labels), output_loss)`` to distil ``entry``'s model on; ``subset`` keeps that
    many examples, drawn with ``seed``. Unlabelled data gets zero labels (unused)."""
    if isinstance(entry, ImageClassifier):
        inputs, labels = entry.train_data()
        data: tuple[Inputs, torch.Tensor] = (inputs, labels)
        output_loss = "kd"
    elif isinstance(entry, MiniLM):
        ids, mask = text_batches(unlabelled_texts(), seq_len)
        data, output_loss = ((ids, mask), torch.zeros(len(ids), dtype=torch.int64)), "cosine"
    else:
        batches = entry.calibration_batches(8)
        columns = tuple(torch.cat([b[i] for b in batches]) for i in range(len(batches[0])))
        merged: Inputs = columns[0] if len(columns) == 1 else columns
        data = (merged, torch.zeros(len(columns[0]), dtype=torch.int64))
        output_loss = "mse"
    return _subset(data, subset, seed), output_loss


def _subset(
    data: tuple[Inputs, torch.Tensor], subset: int | None, seed: int
) -> tuple[Inputs, torch.Tensor]:
    inputs, labels = data
    if subset is None or subset >= len(labels):
        return data
    if subset < 1:
        raise ConfigError(f"--train-subset {subset}: must be >= 1.")
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:subset]
    if isinstance(inputs, tuple):
        return tuple(t[keep] for t in inputs), labels[keep]
    return inputs[keep], labels[keep]
