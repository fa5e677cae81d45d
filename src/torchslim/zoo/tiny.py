"""Tiny random-init models for tests and for trying a technique in seconds.

Each entry is built from a transformers config (hidden sizes 32-64, 2 layers) or from our own
CNNs, under a fixed seed: every ``load()`` gives the same weights (BatchNorm layers get random
affine parameters and the running statistics of one seeded batch). Random models have no task
accuracy, so ``evaluate`` measures how far a model's outputs moved from the freshly built
reference on fixed inputs: ``cosine_vs_reference`` (mean per-sample cosine similarity, 1.0 for
the unmodified model) and ``max_abs_diff_vs_reference`` (0.0 for it).

transformers is imported only when a model is built, so listing the zoo stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import ConfigError
from torchslim.zoo import architectures
from torchslim.zoo._entry import Batch, ZooEntry, forward
from torchslim.zoo._hf import HuggingFaceOutput
from torchslim.zoo._inputs import InputSpec, output_tensors, random_batch

WEIGHT_SEED = 0
EVAL_SEED = 0  # eval inputs = example_inputs(EVAL_BATCH); calibration batch i uses seed 1000 + i
CALIBRATION_SEED = 1000
BATCHNORM_SEED = 2000  # the batch that sets BatchNorm running statistics at build time
EVAL_BATCH = 8
VOCAB_SIZE = 1000
SEQ_LEN = 16
NUM_CLASSES = 10
TOKENS = (InputSpec((1, SEQ_LEN), torch.int64, low=0, high=VOCAB_SIZE),)
RGB_32 = (InputSpec((1, 3, 32, 32)),)
GRAY_28 = (InputSpec((1, 1, 28, 28)),)


class TinyEntry(ZooEntry):
    """A seeded random model, evaluated by output similarity to its freshly built reference."""

    default_batch_size = 2

    def __init__(
        self,
        name: str,
        task: str,
        card: str,
        build: Callable[[], nn.Module],
        inputs: Sequence[InputSpec],
    ) -> None:
        self.name, self.task, self.build, self.inputs = name, task, build, tuple(inputs)
        self.card = (
            f"{card} Random weights (seed {WEIGHT_SEED}), seeded random inputs. Metrics: cosine "
            "and max |difference| of the outputs against the unmodified model on 8 fixed inputs."
        )
        self._reference: torch.Tensor | None = None

    def load(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left untouched
            torch.manual_seed(WEIGHT_SEED)
            model = self.build()
            _randomize_batchnorm(model, random_batch(self.inputs, 16, BATCHNORM_SEED))
        return model.eval()

    @property
    def has_tokens(self) -> bool:
        return self.inputs == TOKENS

    def example_inputs(self, batch_size: int = 1, seq_len: int | None = None) -> Batch:
        return random_batch(self._specs(seq_len), batch_size, EVAL_SEED)

    def calibration_batches(
        self, n: int, batch_size: int = 4, seq_len: int | None = None
    ) -> list[Batch]:
        specs = self._specs(seq_len)
        return [random_batch(specs, batch_size, CALIBRATION_SEED + i) for i in range(n)]

    def _specs(self, seq_len: int | None) -> tuple[InputSpec, ...]:
        if seq_len is None:
            return self.inputs
        if not self.has_tokens:
            raise ConfigError(f"--seq-len: {self.name} is not a text model")
        return (InputSpec((1, seq_len), torch.int64, low=0, high=VOCAB_SIZE),)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Cosine similarity and max absolute difference to the reference model's outputs."""
        if self._reference is None:
            self._reference = self._outputs(self.load())
        reference = self._reference  # (B, N) float32
        outputs = self._outputs(model)  # (B, N) float32
        cosine = F.cosine_similarity(outputs.double(), reference.double(), dim=1).mean()
        return {
            "cosine_vs_reference": float(cosine),
            "max_abs_diff_vs_reference": float((outputs - reference).abs().max()),
        }

    def metric_names(self) -> tuple[str, ...]:
        return ("cosine_vs_reference", "max_abs_diff_vs_reference")

    def _outputs(self, model: nn.Module) -> torch.Tensor:
        """Every output of the eval batch, flattened per sample: (EVAL_BATCH, N) float32 on CPU."""
        model.eval()
        output = forward(model, _like_model(model, self.example_inputs(EVAL_BATCH)))
        return torch.cat(
            [t.detach().float().cpu().reshape(EVAL_BATCH, -1) for t in output_tensors(output)], 1
        )


def _randomize_batchnorm(model: nn.Module, batch: Batch) -> None:
    """Give BatchNorm layers random affine parameters and running statistics from one batch.

    Identity statistics would hide BN-folding bugs, and with them MobileNetV2's activations
    vanish through its 17 blocks; the statistics of one train-mode pass keep them near unit scale.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    if not norms:
        return
    momentums = [norm.momentum for norm in norms]
    for norm in norms:
        if norm.affine:
            nn.init.uniform_(norm.weight, 0.5, 1.5)
            nn.init.normal_(norm.bias, std=0.1)
        norm.momentum = 1.0  # running statistics := this batch's statistics
    model.train()
    with torch.no_grad():
        model(*batch)
    for norm, momentum in zip(norms, momentums, strict=True):
        norm.momentum = momentum


def _like_model(model: nn.Module, batch: Batch) -> Batch:
    """Move the inputs to the model's device; float inputs take its dtype (e.g. bfloat16)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return batch
    dtype = parameter.dtype if parameter.dtype.is_floating_point else None
    return tuple(
        x.to(parameter.device, dtype=dtype if x.is_floating_point() else None) for x in batch
    )


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return HuggingFaceOutput(BertModel(config, add_pooling_layer=False), ("input_ids",))


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, use_cache=False,
    )  # fmt: skip
    return HuggingFaceOutput(LlamaForCausalLM(config), ("input_ids",))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB_SIZE, n_embd=32, n_layer=2, n_head=2, n_positions=64, use_cache=False,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return HuggingFaceOutput(GPT2LMHeadModel(config), ("input_ids",))


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    config.num_labels = NUM_CLASSES  # a property of every config, not a typed constructor field
    return HuggingFaceOutput(ViTForImageClassification(config), ("pixel_values",))


def _resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="basic"
    )
    config.num_labels = NUM_CLASSES
    return HuggingFaceOutput(ResNetForImageClassification(config), ("pixel_values",))


def _mobilenetv2() -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    # MobileNetV2's 17 inverted-residual blocks are fixed; the width multiplier makes it tiny
    config = MobileNetV2Config(image_size=32, depth_multiplier=0.35, finegrained_output=False)
    config.num_labels = NUM_CLASSES
    return HuggingFaceOutput(MobileNetV2ForImageClassification(config), ("pixel_values",))


def entries() -> list[ZooEntry]:
    """The tiny entries; building none of them (transformers is imported on ``load``)."""
    text, lm, image = "tiny-text-encoder", "tiny-causal-lm", "tiny-image-classifier"
    return [
        TinyEntry("tiny-bert", text, "BERT encoder (2 layers, hidden 32, 2 heads); output: "
                  f"last hidden state (B, {SEQ_LEN}, 32).", _bert, TOKENS),
        TinyEntry("tiny-llama", lm, "Llama decoder (2 layers, hidden 64, 4 query / 2 KV heads, "
                  f"SwiGLU, RMSNorm, RoPE); output: logits (B, {SEQ_LEN}, {VOCAB_SIZE}).",
                  _llama, TOKENS),
        TinyEntry("tiny-gpt2", lm, "GPT-2 (2 layers, hidden 32, 2 heads, Conv1D projections); "
                  f"output: logits (B, {SEQ_LEN}, {VOCAB_SIZE}).", _gpt2, TOKENS),
        TinyEntry("tiny-vit", image, "ViT (2 layers, hidden 32, 8x8 patches of 32x32 RGB); "
                  "output: logits (B, 10).", _vit, RGB_32),
        TinyEntry("tiny-resnet", image, "transformers ResNet (basic blocks, 2 stages of 32/64 "
                  "channels) on 32x32 RGB; output: logits (B, 10).", _resnet, RGB_32),
        TinyEntry("tiny-mobilenetv2", image, "transformers MobileNetV2 (width 0.35, depthwise "
                  "convs, ReLU6) on 32x32 RGB; output: logits (B, 10).", _mobilenetv2, RGB_32),
        TinyEntry("tiny-cnn", image, "Our FashionCNN at width 8 on 28x28 grayscale; output: "
                  "logits (B, 10).", lambda: architectures.FashionCNN(width=8), GRAY_28),
        TinyEntry("tiny-resnet8", image, "Our CIFAR-style ResNet of depth 8 (one block per "
                  "stage) on 28x28 grayscale; output: logits (B, 10).",
                  lambda: architectures.ResNet(8), GRAY_28),
        TinyEntry("tiny-resnet14", image, "Our CIFAR-style ResNet of depth 14 (two blocks per "
                  "stage: residual blocks that depth pruning can drop) on 28x28 grayscale; "
                  "output: logits (B, 10).", lambda: architectures.ResNet(14), GRAY_28),
    ]  # fmt: skip
