"""Hugging Face models as plain tensor modules, and the inputs their configs call for."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.zoo._inputs import InputSpec

DEFAULT_SEQ_LEN = 32  # token inputs of text models, capped by the config's max positions
DEFAULT_IMAGE_SIZE = 224  # vision configs without image_size (e.g. ResNet)


class HuggingFaceOutput(nn.Module):
    """A transformers model called with positional tensors and returning one tensor.

    The tensor is ``logits`` when the model has a head, else ``last_hidden_state``, else the
    output's first field; techniques and the profiler see a plain ``Tensor -> Tensor`` module.

    A model called with token ids alone gets an explicit all-ones attention mask (the same
    result: no padding), so transformers skips a decoder's packed-sequence detection, whose
    ``torch.diff`` and boolean ``cumsum`` ONNX cannot export.
    """

    def __init__(self, model: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        accepted = inspect.signature(model.forward).parameters
        self._adds_mask = "input_ids" in self.input_names and (
            "attention_mask" in accepted and "attention_mask" not in self.input_names
        )

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        if self._adds_mask:
            named["attention_mask"] = torch.ones_like(named["input_ids"])
        output = self.model(**named)
        if isinstance(output, torch.Tensor):
            return output
        for key in ("logits", "last_hidden_state"):
            if isinstance(output, dict) and key in output:
                return output[key]
        return output[0]


def huggingface_inputs(
    config: Any, shape: tuple[int, ...] | None = None
) -> tuple[tuple[str, ...], tuple[InputSpec, ...]]:
    """Input names and specs of a transformers config: token ids or pixel values.

    Text models (``vocab_size``) get ``input_ids`` of ``shape`` (batch, seq) or a sequence of
    ``DEFAULT_SEQ_LEN`` capped by the config's positions; encoder-decoders get the same ids as
    ``decoder_input_ids``. Vision models (``num_channels``) get ``pixel_values`` of ``shape`` or
    the config's ``image_size``.
    """
    if hasattr(config, "vocab_size") and not hasattr(config, "num_channels"):
        if shape is not None and len(shape) != 2:
            raise ConfigError(f"a text model takes (batch, seq_len) token ids; got {shape}")
        positions = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        seq_len = min(DEFAULT_SEQ_LEN, int(positions or DEFAULT_SEQ_LEN))
        ids = InputSpec(shape or (1, seq_len), torch.int64, low=0, high=config.vocab_size)
        if getattr(config, "is_encoder_decoder", False):
            return ("input_ids", "decoder_input_ids"), (ids, ids)
        return ("input_ids",), (ids,)
    if hasattr(config, "num_channels"):
        if shape is not None and len(shape) != 4:
            raise ConfigError(f"a vision model takes (batch, channels, h, w) pixels; got {shape}")
        size = getattr(config, "image_size", DEFAULT_IMAGE_SIZE)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return ("pixel_values",), (InputSpec(shape or (1, config.num_channels, height, width)),)
    raise ConfigError(
        f"cannot derive inputs for a {config.model_type!r} config: only text models (vocab_size) "
        "and vision models (num_channels) are supported; use a package.module:factory spec."
    )


def huggingface_class(config: Any) -> Any:
    """The config's own architecture (keeps its head) when transformers has it, else AutoModel."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        found = getattr(transformers, name, None)
        if isinstance(found, type) and issubclass(found, transformers.PreTrainedModel):
            return found
    return transformers.AutoModel
