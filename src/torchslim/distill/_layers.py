"""Which teacher and student modules a layer match names, and how they are paired."""

from __future__ import annotations

import re

from torch import nn

from torchslim.errors import ConfigError, did_you_mean


class LayerMatchError(ConfigError):
    """A layer name or pattern that matches no module, or groups that cannot be paired."""


def resolve(model: nn.Module, pattern: str, side: str) -> list[str]:
    """Module names of ``model`` equal to ``pattern`` or fully matching ``"re:<regex>"``."""
    names = [name for name, _ in model.named_modules() if name]
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as error:
            raise LayerMatchError(f"{side} pattern {pattern!r} is not a regex: {error}") from None
        found = [name for name in names if regex.fullmatch(name)]
    else:
        found = [pattern] if pattern in names else []
    if not found:
        probe = pattern[3:] if pattern.startswith("re:") else pattern
        hint = did_you_mean(probe, names)
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise LayerMatchError(
            f"{side} layer {pattern!r} matches no module of the {side}.{hint} The {side}'s "
            f"modules: {shown} ({len(names)} in all; use a name or 're:<regex>')."
        )
    return found


def pair(student: list[str], teacher: list[str]) -> list[tuple[str, str]]:
    """Pair in order; a teacher with k times the student's layers gives every k-th (the last of
    each group), as TinyBERT's uniform mapping does."""
    if len(teacher) == len(student):
        return list(zip(student, teacher, strict=True))
    if len(student) and len(teacher) % len(student) == 0:
        k = len(teacher) // len(student)
        return list(zip(student, teacher[k - 1 :: k], strict=True))
    raise LayerMatchError(
        f"{len(student)} student layer(s) {student} cannot be paired with {len(teacher)} "
        f"teacher layer(s) {teacher}: the teacher count must equal or be a multiple of the "
        "student count. Narrow one of the patterns."
    )
