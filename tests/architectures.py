"""Architectures the repo does not ship, for "prune any model" tests: tiny random-init
transformers models built from configs (offline) and hand-written nets with the ops that break
naive channel pruning (depthwise/grouped convs, split/cat, view-heavy heads, functional SDPA).

Each builder returns (model in eval mode, example inputs, a rebuild function for reloading).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Built = tuple[nn.Module, Any, Callable[[], nn.Module]]


# ---- hand-written nets -------------------------------------------------------------------------


class ConvAttentionNet(nn.Module):
    """Depthwise convs, a channel cat and a functional SDPA head whose reshape uses constants."""

    def __init__(self, width: int = 32, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.heads, self.width = heads, width
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.depthwise = nn.Conv2d(width, width, 3, 1, 1, groups=width)
        self.pointwise = nn.Conv2d(width, width, 1)
        self.branch = nn.Conv2d(width, width, 3, 1, 1)
        self.fuse = nn.Conv2d(2 * width, width, 1)
        self.qkv = nn.Conv2d(width, 3 * width, 1)
        self.proj = nn.Conv2d(width, width, 1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C, H, W)
        a = self.pointwise(F.relu(self.depthwise(x)))
        b = F.relu(self.branch(x))
        x = self.fuse(torch.cat([a, b], dim=1))  # (B, C, H, W)
        batch, _, height, width = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)  # each (B, C, H, W)
        d = self.width // self.heads
        q = q.reshape(batch, self.heads, d, height * width).transpose(2, 3)  # (B, h, HW, d)
        k = k.reshape(batch, self.heads, d, height * width).transpose(2, 3)
        v = v.reshape(batch, self.heads, d, height * width).transpose(2, 3)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, HW, d)
        y = y.transpose(2, 3).reshape(batch, self.width, height, width)
        x = x + self.proj(y)
        return self.head(x.mean((2, 3)))  # (B, classes)


class GroupedConvNet(nn.Module):
    """ResNeXt-style block: 1x1 -> grouped 3x3 -> 1x1 with a residual add."""

    def __init__(self, width: int = 32, groups: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1)
        self.reduce = nn.Conv2d(width, 2 * width, 1)
        self.grouped = nn.Conv2d(2 * width, 2 * width, 3, 1, 1, groups=groups)
        self.expand = nn.Conv2d(2 * width, width, 1)
        self.bn = nn.BatchNorm2d(width)
        self.mid = nn.Conv2d(width, 2 * width, 3, 2, 1)
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = x + self.bn(self.expand(F.relu(self.grouped(F.relu(self.reduce(x))))))
        x = F.relu(self.mid(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SplitCatNet(nn.Module):
    """Channel split into two branches (torch.split / chunk) re-joined by cat (ShuffleNet-like)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1)
        self.left = nn.Conv2d(width // 2, width // 2, 3, 1, 1)
        self.right = nn.Sequential(
            nn.Conv2d(width // 2, width, 1), nn.ReLU(), nn.Conv2d(width, width // 2, 1)
        )
        self.mix = nn.Conv2d(width, 2 * width, 3, 2, 1)
        self.head = nn.Linear(2 * width * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))  # (B, C, 8, 8)
        left, right = torch.split(x, x.shape[1] // 2, dim=1)
        x = torch.cat([F.relu(self.left(left)), self.right(right)], dim=1)
        x = F.relu(self.mix(x))  # (B, 2C, 4, 4)
        return self.head(x.view(x.shape[0], -1))


class TinyTransformer(nn.Module):
    """A hand-written pre-norm transformer: fused qkv Linear, view/permute heads, SDPA, MLP."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2, vocab: int = 100) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm1": nn.LayerNorm(dim),
                    "qkv": nn.Linear(dim, 3 * dim),
                    "out": nn.Linear(dim, dim),
                    "norm2": nn.LayerNorm(dim),
                    "fc1": nn.Linear(dim, 4 * dim),
                    "fc2": nn.Linear(4 * dim, dim),
                }
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (B, T, C)
        for block in self.blocks:
            batch, length, _ = x.shape
            qkv = block["qkv"](block["norm1"](x)).view(batch, length, 3, self.heads, -1)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, T, d)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, h, T, d)
            x = x + block["out"](y.transpose(1, 2).reshape(batch, length, -1))
            x = x + block["fc2"](F.gelu(block["fc1"](block["norm2"](x))))
        return self.lm_head(self.norm(x))  # (B, T, vocab)


class MixerNet(nn.Module):
    """MLP-Mixer-like: patchify conv, flatten(2).transpose, token- and channel-mixing MLPs."""

    def __init__(self, dim: int = 32, patches: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.norm = nn.LayerNorm(dim)
        self.token_fc1, self.token_fc2 = nn.Linear(patches, 64), nn.Linear(64, patches)
        self.channel_fc1, self.channel_fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, C)
        y = self.norm(x).transpose(1, 2)  # (B, C, N)
        x = x + self.token_fc2(F.gelu(self.token_fc1(y))).transpose(1, 2)
        x = x + self.channel_fc2(F.gelu(self.channel_fc1(self.norm(x))))
        return self.head(x.mean(1))


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return factory().eval()

    return build


def _images(size: int = 16) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def hand_written(name: str) -> Built:
    """One of the hand-written nets (see HAND_WRITTEN)."""
    factories: dict[str, tuple[Callable[[], nn.Module], Any]] = {
        "conv_attention": (ConvAttentionNet, _images(16)),
        "grouped_conv": (GroupedConvNet, _images(8)),
        "split_cat": (SplitCatNet, _images(8)),
        "tiny_transformer": (TinyTransformer, torch.randint(0, 100, (2, 16))),
        "mixer": (MixerNet, _images(16)),
    }
    factory, inputs = factories[name]
    build = _seeded(factory)
    return build(), inputs, build


HAND_WRITTEN = ("conv_attention", "grouped_conv", "split_cat", "tiny_transformer", "mixer")


# ---- transformers models from configs (random init, offline) ------------------------------------


def _text_inputs(vocab: int = 256, length: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, vocab, (1, length), generator=torch.Generator().manual_seed(2))
    return {"input_ids": ids}


def _pixels(size: int = 32, channels: int = 3) -> dict[str, torch.Tensor]:
    pixels = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(3))
    return {"pixel_values": pixels}


def _hf_configs() -> dict[str, tuple[str, Any, dict[str, Any]]]:
    import transformers as t

    text = {"vocab_size": 256, "max_position_embeddings": 64}
    llama = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, **text}
    return {
        "bert": ("BertModel", t.BertConfig(hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=256, **text), _text_inputs()),
        "gpt2": ("GPT2LMHeadModel", t.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256,
                 n_positions=64), _text_inputs()),
        "llama_gqa": ("LlamaForCausalLM", t.LlamaConfig(num_attention_heads=8,
                      num_key_value_heads=2, **llama), _text_inputs()),
        "qwen2": ("Qwen2ForCausalLM", t.Qwen2Config(num_attention_heads=4,
                  num_key_value_heads=2, **llama), _text_inputs()),
        "mistral": ("MistralForCausalLM", t.MistralConfig(num_attention_heads=4,
                    num_key_value_heads=1, **llama), _text_inputs()),
        "vit": ("ViTForImageClassification", t.ViTConfig(image_size=32, patch_size=8,
                hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=256, num_labels=10), _pixels()),
        "swin": ("SwinForImageClassification", t.SwinConfig(image_size=32, patch_size=4,
                 embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
                 num_labels=10), _pixels()),
        "convnext": ("ConvNextForImageClassification", t.ConvNextConfig(
                     hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10),
                     _pixels()),
        "mobilenet_v2": ("MobileNetV2ForImageClassification", t.MobileNetV2Config(
                         depth_multiplier=0.35, image_size=32, num_labels=10), _pixels()),
        "resnet": ("ResNetForImageClassification", t.ResNetConfig(embedding_size=16,
                   hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
                   num_labels=10), _pixels()),
        "t5": ("T5ForConditionalGeneration", t.T5Config(vocab_size=256, d_model=64, d_kv=16,
               d_ff=128, num_layers=2, num_heads=4, decoder_start_token_id=0),
               {**_text_inputs(), "decoder_input_ids": _text_inputs(length=8)["input_ids"]}),
        "whisper": ("WhisperForConditionalGeneration", t.WhisperConfig(vocab_size=256,
                    num_mel_bins=16, d_model=64, encoder_layers=1, decoder_layers=1,
                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                    decoder_ffn_dim=128, max_source_positions=16, max_target_positions=32,
                    decoder_start_token_id=0, pad_token_id=0),
                    {"input_features": torch.randn(1, 16, 32, generator=torch.Generator()
                     .manual_seed(4)), "decoder_input_ids": _text_inputs(length=8)["input_ids"]}),
    }  # fmt: skip


HUGGING_FACE = (
    "bert", "gpt2", "llama_gqa", "qwen2", "mistral", "vit", "swin", "convnext", "mobilenet_v2",
    "resnet", "t5", "whisper",
)  # fmt: skip


def hugging_face(name: str) -> Built:
    """A tiny random-init transformers model (see HUGGING_FACE) and its keyword inputs."""
    import transformers

    class_name, config, inputs = _hf_configs()[name]
    cls = getattr(transformers, class_name)

    def build() -> nn.Module:
        torch.manual_seed(0)
        return cls(config).eval()

    return build(), inputs, build


def main_output(output: Any) -> torch.Tensor:
    """The first tensor of a model's output (HF ModelOutput, tuple or tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    return main_output(output[0])
