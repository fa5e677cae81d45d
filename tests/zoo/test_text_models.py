import math
import subprocess
import sys

import pytest
import torch

from torchslim import zoo
from torchslim.errors import ConfigError
from torchslim.zoo import corpora, text

# Measured on this code (fp32, CPU): perplexity of the first 2 windows of each eval text. The
# entry's default of 8 windows gives 38.68 (Austen) and 32.67 (Lee); the test uses 2 for time.
SMOLLM_TWO_WINDOWS = {"perplexity_austen": 35.35, "perplexity_lee": 31.82}


def test_sentence_splitter():
    text_ = "It is a truth universally acknowledged. Short one. Is this the end of it all?"
    assert corpora.sentences(text_, min_words=4) == [
        "It is a truth universally acknowledged.",
        "Is this the end of it all?",
    ]


def test_listing_the_text_entries_loads_no_model_library():
    code = (
        "import sys, torchslim.zoo as z; z.get('minilm'); z.get('smollm2-135m');"
        "print([m for m in ('transformers', 'scipy.stats', 'rdata', 'gguf') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert text.entries()  # listing builds the entries without loading any model


@pytest.mark.assets
def test_word_pair_sets_are_complete():
    assert len(corpora.word_pairs("wordsim353")) == 353
    assert len(corpora.word_pairs("simlex999")) == 999
    assert corpora.word_pairs("wordsim353")[0] == ("love", "sex", 6.77)


@pytest.mark.assets
def test_lee_splits_are_disjoint_and_austen_has_six_novels():
    assert len(corpora.lee_corpus("background")) == 300 and len(corpora.lee_corpus("test")) == 50
    assert not set(corpora.lee_corpus("background")) & set(corpora.lee_corpus("test"))
    novels = corpora.austen_novels()
    assert set(novels) == set(corpora.NOVELS)
    assert novels["persuasion"].startswith("Persuasion")
    assert "Elinor" in novels["sensesensibility"] and "Elinor" not in novels["persuasion"]


@pytest.fixture(scope="module")
def minilm():
    entry = zoo.get("minilm")
    return entry, entry.load()


@pytest.mark.assets
def test_minilm_reproduces_the_published_word_similarity(minilm):
    entry, model = minilm
    metrics = entry.evaluate(model)
    assert metrics["wordsim353_spearman"] == pytest.approx(0.729, abs=0.005)  # measured 0.7289
    assert metrics["simlex999_spearman"] == pytest.approx(0.446, abs=0.005)  # measured 0.4462
    assert metrics["cosine_vs_fp32"] > 0.9999


@pytest.mark.assets
def test_minilm_embeds_unit_vectors_that_ignore_padding(minilm):
    entry, model = minilm
    ids, mask = entry.example_inputs(4)
    assert ids.shape == mask.shape == (4, 128)
    assert 0 < int(mask.sum()) < 4 * 128  # real sentences, padded
    with torch.no_grad():
        padded = model(ids, mask)  # (4, 384)
        length = int(mask[0].sum())
        unpadded = model(ids[:1, :length], mask[:1, :length])  # (1, 384)
    assert padded.shape == (4, 384)
    assert torch.allclose(padded.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(padded[0], unpadded[0], atol=1e-5)  # mean pooling skips padding


@pytest.mark.assets
def test_minilm_calibration_never_reads_eval_text(minilm):
    entry, _ = minilm
    assert not set(entry.calibration_sentences()) & set(entry.held_out_sentences())
    eval_rows = {tuple(row.tolist()) for row in entry.example_inputs(148)[0]}
    batches = entry.calibration_batches(4)
    assert [batch[0].shape for batch in batches] == [(16, 128)] * 4
    assert not {tuple(row.tolist()) for batch in batches for row in batch[0]} & eval_rows
    with pytest.raises(ConfigError, match="at most"):
        entry.calibration_batches(10_000)


@pytest.fixture(scope="module")
def smollm2():
    entry = zoo.get("smollm2-135m")
    return entry, entry.load()


@pytest.mark.slow  # 16-24 s on one core (make test-slow)
@pytest.mark.assets
def test_smollm2_perplexity_on_austen_and_lee(smollm2):
    entry, model = smollm2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "Q4_1-derived: weights already lie on a 4-bit grid" in entry.card
    assert text.SmolLM2.eval_windows == 8 and text.SmolLM2.window == 512
    short = text.SmolLM2()
    short.eval_windows = 2
    assert {k: w.shape for k, w in short.eval_token_windows().items()} == {
        "perplexity_austen": (2, 512),
        "perplexity_lee": (2, 512),
    }
    metrics = short.evaluate(model)
    assert all(math.isfinite(value) for value in metrics.values())
    assert metrics == pytest.approx(SMOLLM_TWO_WINDOWS, rel=0.01)


@pytest.mark.assets
def test_smollm2_inputs_are_real_token_windows(smollm2):
    entry, model = smollm2
    (ids,) = entry.example_inputs(2)
    assert ids.shape == (2, 128) and ids.dtype == torch.int64
    assert torch.equal(ids, text.token_windows("austen-eval", 128)[:2])
    with torch.no_grad():
        assert model(ids[:, :16]).shape == (2, 16, 49152)
    batches = entry.calibration_batches(3, batch_size=2)
    assert [batch[0].shape for batch in batches] == [(2, 512)] * 3
    with pytest.raises(ConfigError, match="at most"):
        entry.calibration_batches(10_000)


@pytest.mark.assets
def test_smollm2_calibration_shares_no_32_token_run_with_eval():
    def runs(windows: torch.Tensor, n: int = 32) -> set[tuple[int, ...]]:
        return {tuple(w[i : i + n].tolist()) for w in windows for i in range(len(w) - n + 1)}

    entry = text.SmolLM2()
    evaluated = torch.cat([text.token_windows(f"{s}-eval", 512) for s in ("austen", "lee")])
    assert len(evaluated) >= 2 * entry.eval_windows  # every window evaluation can use
    for source in ("austen", "lee"):  # benchmarks judge small differences on >= 16 per text
        assert len(text.token_windows(f"{source}-eval", 512)) >= 16
    assert not runs(entry.calibration_windows(512)) & runs(evaluated)


@pytest.mark.assets
def test_smollm2_is_profiled_on_meta():
    from torchslim.profile import profile

    entry = zoo.get("smollm2-135m")
    model = entry.meta_model()  # how long this takes is measured in benchmarks/profile_meta.py
    report = profile(model, (torch.zeros(1, 512, dtype=torch.long, device="meta"),))
    assert report.params == 134_515_008
    layers, hidden, inner, kv, vocab, seq = 30, 576, 1536, 3 * 64, 49152, 512
    per_token = (
        layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner) + hidden * vocab
    )
    attention = layers * 2 * seq * seq * hidden  # QK^T and AV over all 9 heads of 64
    assert report.total.macs == seq * per_token + attention
    assert report.unsupported_ops == {}
