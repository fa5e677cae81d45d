"""``Distiller``: the distillation loss as a module the shared ``Trainer`` takes as ``loss_fn``.

The teacher is frozen and stays in eval mode; forward hooks on the matched teacher and student
modules capture their outputs during the two forward passes of each step. Adapters (FitNets
regressors) are this module's parameters, so the trainer trains and checkpoints them with the
student. There is no global session: build one per run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchslim.distill._layers import pair, resolve
from torchslim.distill.config import DistillConfig
from torchslim.distill.losses import (
    AttentionMapLoss,
    AttentionTransferLoss,
    DistillShapeError,
    FeatureLoss,
    KDLoss,
    attention_probabilities,
)
from torchslim.errors import ConfigError
from torchslim.train._batches import Inputs, call_model
from torchslim.train.trainer import NonFiniteLossError


@dataclass(frozen=True)
class MatchedPair:
    """One resolved pair of modules and how they are compared."""

    student: str
    teacher: str
    kind: str
    weight: float


def main_output(output: Any) -> torch.Tensor:
    """The tensor a model's output stands for: itself, ``logits``, or the first element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return output["logits"] if "logits" in output else next(iter(output.values()))
    if isinstance(output, tuple | list) and output:
        return main_output(output[0])
    raise DistillShapeError(f"cannot take a tensor from a model output of type {type(output)}.")


class Distiller(nn.Module):
    """Distillation loss ``distiller(student, inputs, labels) -> loss`` for ``Trainer``.

    Args:
        student: the model being trained (hooks are registered on it).
        teacher: the frozen model distilled from (its parameters stop requiring grad).
        config: output loss, temperature, alpha and layer matches.
        example_inputs: one batch; needed when a match may need an adapter (feature, hidden):
            a probe forward reads the widths, and checks teacher and student outputs agree.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        config: DistillConfig | None = None,
        example_inputs: Inputs | None = None,
    ) -> None:
        super().__init__()
        self.config = config or DistillConfig()
        self.teacher = teacher.eval().requires_grad_(False)
        self._student = [student]  # not a submodule: the trainer owns, moves and saves it
        self.kd = KDLoss(self.config.temperature, self.config.alpha)
        self.pairs = self._resolve(student, teacher)
        self._captured: dict[str, dict[int, torch.Tensor]] = {"student": {}, "teacher": {}}
        self._handles: list[RemovableHandle] = []
        for index, matched in enumerate(self.pairs):
            self._hook(student, matched.student, matched.kind, ("student", index))
            self._hook(teacher, matched.teacher, matched.kind, ("teacher", index))
        self.layer_losses = nn.ModuleList()
        self.last_losses: dict[str, float] = {}
        needs_widths = any(p.kind in ("feature", "hidden") for p in self.pairs)
        if needs_widths and example_inputs is None:
            raise ConfigError(
                "feature/hidden matches need example_inputs: the adapters' widths are read "
                "from one probe forward pass."
            )
        if example_inputs is None:
            self.layer_losses.extend(self._loss_for(p, None, None) for p in self.pairs)
        else:
            self._probe(example_inputs)

    @property
    def student(self) -> nn.Module:
        return self._student[0]

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # dropout off, BatchNorm statistics frozen, whatever the caller does
        return self

    def forward(
        self, model: nn.Module, inputs: Inputs, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        parts = self._parts(model, inputs, labels)
        total = torch.stack(list(parts.values())).sum()
        self.last_losses = {name: float(value.detach()) for name, value in parts.items()}
        bad = {k: v for k, v in self.last_losses.items() if not torch.isfinite(torch.tensor(v))}
        if bad and not dist.is_initialized():  # under DDP the trainer's check stops all ranks
            raise NonFiniteLossError(
                f"distillation loss is not finite: {bad} (all terms: {self.last_losses}). Lower "
                "the learning rate or the match weights; check the inputs for NaN."
            )
        return total

    def remove_hooks(self) -> None:
        """Detach from student and teacher (the Distiller is unusable afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _parts(
        self, model: nn.Module, inputs: Inputs, labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        for side in self._captured.values():
            side.clear()
        with torch.no_grad():
            teacher_out = main_output(call_model(self.teacher, inputs))
        student_out = main_output(call_model(model, inputs))
        parts: dict[str, torch.Tensor] = {}
        if self.config.output_loss != "none":
            output = self._output_loss(student_out, teacher_out, labels)
            parts["output"] = self.config.output_weight * output
        for index, (matched, loss) in enumerate(zip(self.pairs, self.layer_losses, strict=True)):
            if index not in self._captured["student"]:
                raise ConfigError(
                    f"student layer {matched.student!r} did not run in this forward pass: call "
                    "the Distiller with the student it was built with."
                )
            student_value = self._captured["student"][index]
            teacher_value = self._captured["teacher"][index]
            parts[f"{matched.kind}:{matched.student}"] = matched.weight * loss(
                student_value, teacher_value
            )
        return parts

    def _output_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        kind = self.config.output_loss
        if kind == "kd":
            return self.kd(student, teacher, labels)
        if student.shape != teacher.shape:
            raise DistillShapeError(
                f"output_loss={kind!r} compares outputs of the same shape: student "
                f"{tuple(student.shape)}, teacher {tuple(teacher.shape)}. Match a hidden layer "
                "with an adapter instead (kind 'hidden') and set output_loss='none'."
            )
        if kind == "mse":
            return F.mse_loss(student.float(), teacher.float())
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()

    def _resolve(self, student: nn.Module, teacher: nn.Module) -> list[MatchedPair]:
        pairs: list[MatchedPair] = []
        for match in self.config.matches:
            found = pair(
                resolve(student, match.student, "student"),
                resolve(teacher, match.teacher, "teacher"),
            )
            pairs.extend(MatchedPair(s, t, match.kind, match.weight) for s, t in found)
        return pairs

    def _hook(self, model: nn.Module, name: str, kind: str, where: tuple[str, int]) -> None:
        side, index = where
        store = self._captured[side]
        module = model.get_submodule(name)
        if kind != "attention_map":

            def keep(_module: nn.Module, _args: Any, output: Any) -> None:
                store[index] = main_output(output)

            self._handles.append(module.register_forward_hook(keep))
            return
        query, key, heads = _attention_parts(module, name, side)
        projected: dict[str, torch.Tensor] = {}

        def keep_query(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            projected["query"] = output

        def keep_key(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            store[index] = attention_probabilities(projected.pop("query"), output, heads)

        self._handles.append(query.register_forward_hook(keep_query))
        self._handles.append(key.register_forward_hook(keep_key))

    def _probe(self, example_inputs: Inputs) -> None:
        """One forward of each model in eval mode: read widths, build adapters, check shapes."""
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                for side in self._captured.values():
                    side.clear()
                teacher_out = main_output(call_model(self.teacher, example_inputs))
                student_out = main_output(call_model(self.student, example_inputs))
                for index, matched in enumerate(self.pairs):
                    student_value = self._captured["student"].get(index)
                    teacher_value = self._captured["teacher"].get(index)
                    self.layer_losses.append(self._loss_for(matched, student_value, teacher_value))
                if self.config.output_loss != "none":
                    self._output_loss(student_out, teacher_out, None)
                self._parts(self.student, example_inputs, None)  # every shape checked once
        finally:
            self.student.train(was_training)

    def _loss_for(
        self, matched: MatchedPair, student: torch.Tensor | None, teacher: torch.Tensor | None
    ) -> nn.Module:
        if matched.kind == "attention_transfer":
            return AttentionTransferLoss()
        if matched.kind == "attention_map":
            return AttentionMapLoss()
        if student is None or teacher is None:
            raise ConfigError(
                f"layer {matched.student!r} / {matched.teacher!r} produced no tensor in the "
                "probe forward pass; name a module that runs in forward."
            )
        channel_dim = 1 if matched.kind == "feature" and student.ndim == 4 else -1
        if student.ndim != teacher.ndim:
            raise DistillShapeError(
                f"{matched.kind} match {matched.student!r} -> {matched.teacher!r}: student "
                f"{tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in rank."
            )
        return FeatureLoss(student.shape[channel_dim], teacher.shape[channel_dim], channel_dim)


def _attention_parts(module: nn.Module, name: str, side: str) -> tuple[nn.Module, nn.Module, int]:
    """The ``query`` and ``key`` projections of a self-attention module and its head count."""
    query, key = getattr(module, "query", None), getattr(module, "key", None)
    if not isinstance(query, nn.Linear) or not isinstance(key, nn.Linear):
        raise ConfigError(
            f"attention_map: {side} module {name!r} ({type(module).__name__}) has no 'query' "
            "and 'key' Linear children; name the self-attention modules (BERT: "
            "'re:.*attention\\.self')."
        )
    heads = getattr(module, "num_attention_heads", None)
    if heads is None:
        config = getattr(module, "config", None)
        heads = getattr(config, "num_attention_heads", None)
    head_size = getattr(module, "attention_head_size", None)
    if heads is None and isinstance(head_size, int):
        heads = query.out_features // head_size
    if not isinstance(heads, int):
        raise ConfigError(f"attention_map: cannot tell the head count of {side} module {name!r}.")
    return query, key, heads
