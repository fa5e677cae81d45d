"""Writing a quantized LLaMA as GGUF, so llama.cpp's kernels run torchslim's GPTQ/AWQ codes.

llama.cpp's legacy block formats are torchslim weight formats with groups of 32 along the input:
Q4_0 = "int4-g32" (x = d (q - 8)), Q4_1 = "uint4-g32" (x = d q + m, m = -d z), Q8_0 = "int8-g32"
(x = d q); each block stores its scale (and min) as float16. ``export_gguf`` takes a GGUF as the
template: every key/value (architecture, tokenizer, chat template) and every tensor the model
does not replace (embeddings, norms) is copied from it, and each fake-quant Linear of the model
is packed from its own integer codes and scales. With llama.cpp's own quantization of the same
model as the template, the two files differ only in the codes the methods chose.

HF LLaMA stores q/k rows in the rotary layout transformers uses; GGUF interleaves them (the
converter's permute): rows are permuted back here. Groups run along the input, so they survive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from torchslim.errors import ConfigError
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.modules import QuantLinear, quant_modules

BLOCK = 32  # weights per block in Q4_0 / Q4_1 / Q8_0
# torchslim format -> llama.cpp block type name
GGUF_TYPES = {"int4-g32": "Q4_0", "uint4-g32": "Q4_1", "int8-g32": "Q8_0"}
FILE_TYPES = {"F32": 0, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}  # general.file_type: LLAMA_FTYPE_*
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


@dataclass(frozen=True)
class GGUFExport:
    """What ``export_gguf`` wrote: the file, its size and which tensors came from the model."""

    path: Path
    file_bytes: int
    written: dict[str, str]  # GGUF tensor name -> block type packed from the model's codes
    copied: int  # tensors copied unchanged from the template


def block_type(fmt: QuantFormat) -> str:
    """The llama.cpp block type holding ``fmt`` exactly, or a ConfigError naming the choices."""
    name = fmt.short_name
    if name not in GGUF_TYPES:
        raise ConfigError(
            f"weight format {name!r} has no llama.cpp block type; GGUF export takes "
            f"{', '.join(f'{k} ({v})' for k, v in GGUF_TYPES.items())}"
        )
    return GGUF_TYPES[name]


def weight_codes(module: QuantLinear) -> tuple[Tensor, Tensor, Tensor]:
    """Integer codes (out, in), scales (out, G) and zero points (out, G) of a fake-quant layer,
    exactly what its quantizer rounds the latent weight to."""
    quantizer = module.weight_quantizer
    fmt = quantizer.fmt
    weight = module.weight.detach().float()  # (out, in)
    out, columns = weight.shape
    scale, zero = quantizer.qparams()
    scale = scale.detach().float().reshape(out, -1)  # (out, G)
    zero = zero.reshape(out, -1).float()  # (out, G)
    groups = weight.reshape(out, scale.shape[1], -1)  # (out, G, g)
    codes = torch.round(groups / scale[..., None]) + zero[..., None]
    codes = codes.clamp(fmt.qmin, fmt.qmax).reshape(out, columns)
    return codes.to(torch.int32), scale, zero


def pack_blocks(codes: Tensor, scale: Tensor, zero: Tensor, kind: str) -> np.ndarray:
    """(out, in) codes with (out, in / 32) scales/zeros as llama.cpp blocks: (out, bytes) uint8."""
    out, columns = codes.shape
    q = codes.reshape(out, columns // BLOCK, BLOCK)  # (out, B, 32)
    d = scale.to(torch.float16).view(torch.uint8).reshape(out, -1, 2)  # (out, B, 2)
    if kind == "Q8_0":
        body = q.to(torch.int8).view(torch.uint8)  # (out, B, 32)
        parts = [d, body]
    else:
        if kind == "Q4_0":
            q = q + 8  # [-8, 7] -> [0, 15]
        nibbles = (q[..., :16] | (q[..., 16:] << 4)).to(torch.uint8)  # (out, B, 16)
        parts = [d, nibbles]
        if kind == "Q4_1":
            minimum = (-zero * scale).to(torch.float16).view(torch.uint8).reshape(out, -1, 2)
            parts = [d, minimum, nibbles]
    return torch.cat(parts, dim=2).reshape(out, -1).numpy()


def _permute_rows(weight: Tensor, heads: int) -> Tensor:
    """HF rotary row order -> GGUF's interleaved order (convert_hf_to_gguf's ``permute``)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


NORM_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _gguf_name(name: str) -> str | None:
    """``model.layers.3.mlp.up_proj`` (any prefix) -> ``blk.3.ffn_up.weight``."""
    parts = name.split(".")
    if "layers" not in parts:
        return None
    index = parts.index("layers")
    suffix = ".".join(parts[index + 2 :])
    if suffix not in LAYER_NAMES:
        return None
    return f"blk.{parts[index + 1]}.{LAYER_NAMES[suffix]}.weight"


def _float_tensor_name(name: str) -> str | None:
    """A float parameter's GGUF name: embeddings, norms and the Linear weights."""
    if not name.endswith(".weight"):
        return None
    module = name[: -len(".weight")]
    parts = module.split(".")
    if parts[-1] == "embed_tokens":
        return "token_embd.weight"
    if parts[-1] == "norm" and "layers" not in parts:
        return "output_norm.weight"
    if "layers" in parts and parts[-1] in NORM_NAMES:
        return f"blk.{parts[parts.index('layers') + 1]}.{NORM_NAMES[parts[-1]]}.weight"
    return _gguf_name(module)


def _float_tensors(model: nn.Module, heads: int, kv_heads: int) -> dict[str, np.ndarray]:
    """Every float tensor of an unquantized model under its GGUF name (q/k rows permuted)."""
    tensors: dict[str, np.ndarray] = {}
    for name, parameter in model.named_parameters():
        target = _float_tensor_name(name)
        if target is None:
            continue
        weight = parameter.detach().float().cpu()
        if ".attn_q." in target or ".attn_k." in target:
            weight = _permute_rows(weight, heads if ".attn_q." in target else kv_heads)
        tensors[target] = weight.numpy()
    return tensors


def export_gguf(model: nn.Module, template: Path, path: Path, float32: bool = False) -> GGUFExport:
    """Write ``model`` (a transformers LLaMA, possibly wrapped, after ``quantize_`` with int4-g32,
    uint4-g32 or int8-g32 weights) as a GGUF llama.cpp loads; see the module docstring.
    ``float32``: write every tensor of an unquantized model as F32 (embeddings and norms too),
    the input llama.cpp's own quantizer takes.

    Raises:
        ConfigError: a layer's format has no block type, or the template lacks a layer.
    """
    import gguf

    reader = gguf.GGUFReader(template)
    heads = int(reader.fields["llama.attention.head_count"].contents())
    kv_heads = int(reader.fields["llama.attention.head_count_kv"].contents())
    replaced: dict[str, tuple[np.ndarray, str]] = {}
    if float32:
        if quant_modules(model):
            raise ConfigError("float32 GGUF export takes an unquantized model")
        floats = _float_tensors(model, heads, kv_heads)
        replaced = {name: (value, "F32") for name, value in floats.items()}
    for name, module in quant_modules(model).items():
        target = _gguf_name(name)
        if target is None or not isinstance(module, QuantLinear):
            continue
        kind = block_type(module.weight_quantizer.fmt)
        codes, scale, zero = weight_codes(module)
        if target.split(".")[2] in ("attn_q", "attn_k"):
            n = heads if "attn_q" in target else kv_heads
            codes, scale, zero = (_permute_rows(t, n) for t in (codes, scale, zero))
        replaced[target] = (pack_blocks(codes, scale, zero, kind), kind)
    present = {t.name for t in reader.tensors}
    missing = sorted(set(replaced) - present)
    if missing:
        raise ConfigError(f"the template GGUF {template} has no tensors {missing[:3]}: wrong model")
    kinds = {kind for _, kind in replaced.values()}
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch=str(reader.fields["general.architecture"].contents()))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        if key == "general.file_type" and len(kinds) == 1:
            value = FILE_TYPES[next(iter(kinds))]
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
    written = {name: kind for name, (_, kind) in replaced.items()}
    copied = 0
    for tensor in reader.tensors:
        if tensor.name in replaced:
            data, kind = replaced[tensor.name]
            raw = None if kind == "F32" else gguf.GGMLQuantizationType[kind]
            writer.add_tensor(tensor.name, data, raw_dtype=raw)
            continue
        data = np.asarray(tensor.data)  # float arrays as they are; block types as bytes
        floating = tensor.tensor_type in (
            gguf.GGMLQuantizationType.F32,
            gguf.GGMLQuantizationType.F16,
        )
        writer.add_tensor(tensor.name, data, raw_dtype=None if floating else tensor.tensor_type)
        copied += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFExport(path, path.stat().st_size, written, copied)
