"""Distillation configuration: which losses, which layers are matched, with what weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torchslim.errors import ConfigError, reject_unknown_keys

MATCH_KINDS = ("feature", "hidden", "attention_transfer", "attention_map")
OUTPUT_LOSSES = ("kd", "mse", "cosine", "none")


@dataclass(frozen=True)
class LayerMatch:
    """One student layer (or group) distilled towards one teacher layer (or group).

    Attributes:
        student: module name in the student, or ``"re:<regex>"`` (full match) for several.
        teacher: the same for the teacher; a regex may match k times as many modules as the
            student's, and then every k-th (the last of each group of k) is used (TinyBERT's
            uniform layer mapping).
        kind: "feature" (FitNets hint on conv maps, 1x1-conv adapter when widths differ),
            "hidden" (TinyBERT hidden states (B, T, C), linear adapter when widths differ),
            "attention_transfer" (Zagoruyko & Komodakis spatial attention of conv maps),
            "attention_map" (MiniLM/TinyBERT self-attention distributions; names the
            self-attention modules, whose ``query`` and ``key`` children are read).
        weight: multiplies this match's loss.
    """

    student: str
    teacher: str
    kind: str = "feature"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in MATCH_KINDS:
            raise ConfigError(f"LayerMatch.kind={self.kind!r}; allowed: {MATCH_KINDS}.")
        if not self.student or not self.teacher:
            raise ConfigError("LayerMatch.student and LayerMatch.teacher must name modules.")
        if self.weight < 0:
            raise ConfigError(f"LayerMatch.weight={self.weight!r} must be >= 0.")

    @classmethod
    def parse(cls, text: str) -> LayerMatch:
        """``[KIND:]STUDENT=TEACHER[@WEIGHT]``, e.g. ``feature:layer3=layer3`` or
        ``hidden:re:encoder\\.layer\\.\\d+=re:encoder\\.layer\\.\\d+@0.5``."""
        body, _, weight = text.rpartition("@") if "@" in text else (text, "", "")
        kind = "feature"
        for candidate in MATCH_KINDS:
            if body.startswith(candidate + ":"):
                kind, body = candidate, body[len(candidate) + 1 :]
                break
        student, sep, teacher = body.partition("=")
        if not sep:
            raise ConfigError(
                f"--match {text!r}: expected [KIND:]STUDENT=TEACHER[@WEIGHT], e.g. "
                "feature:layer3=layer3@1.0"
            )
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"--match {text!r}: weight {weight!r} is not a number.") from None
        return cls(student.strip(), teacher.strip(), kind, value)


@dataclass(frozen=True)
class DistillConfig:
    """Options of a distillation loss (Hinton et al., arXiv:1503.02531, plus layer matches).

    Attributes:
        temperature: softens both distributions in the KD term; the term is scaled by T^2.
        alpha: weight of the soft (teacher) term; 1 - alpha goes to the hard-label cross-entropy.
        output_loss: "kd" (logits), "mse" or "cosine" (embeddings: the teacher's outputs are
            the targets, no labels needed), or "none" (layer matches only).
        output_weight: multiplies the output loss.
        matches: layer matches, each adding its weighted loss.
    """

    temperature: float = 4.0
    alpha: float = 0.9
    output_loss: str = "kd"
    output_weight: float = 1.0
    matches: tuple[LayerMatch, ...] = ()

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"DistillConfig.temperature={self.temperature!r} must be > 0.")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"DistillConfig.alpha={self.alpha!r} must lie in [0, 1].")
        if self.output_loss not in OUTPUT_LOSSES:
            raise ConfigError(
                f"DistillConfig.output_loss={self.output_loss!r}; allowed: {OUTPUT_LOSSES}."
            )
        if self.output_weight < 0:
            raise ConfigError(f"DistillConfig.output_weight={self.output_weight!r} must be >= 0.")
        if self.output_loss == "none" and not self.matches:
            raise ConfigError("DistillConfig.output_loss='none' needs at least one layer match.")
        matches = tuple(
            m if isinstance(m, LayerMatch) else LayerMatch(**m) for m in self.matches
        )  # dicts from YAML/JSON become LayerMatch
        object.__setattr__(self, "matches", matches)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillConfig:
        reject_unknown_keys(cls, values)
        for match in values.get("matches", ()):
            if isinstance(match, dict):
                reject_unknown_keys(LayerMatch, match)
        return cls(**{**values, "matches": tuple(values.get("matches", ()))})
