import pytest
import torch

from torchslim import zoo
from torchslim.zoo import corpora


def test_word_pair_sets_are_complete():
    assert len(corpora.word_pairs("wordsim353")) == 353
    assert len(corpora.word_pairs("simlex999")) == 999


def test_lee_splits_are_disjoint_and_austen_has_six_novels():
    assert len(corpora.lee_corpus("background")) == 300 and len(corpora.lee_corpus("test")) == 50
    assert not set(corpora.lee_corpus("background")) & set(corpora.lee_corpus("test"))
    novels = corpora.austen_novels()
    assert set(novels) == set(corpora.NOVELS)
    assert novels["persuasion"].startswith("Persuasion")
    assert "Elinor" in novels["sensesensibility"]


def test_sentence_splitter():
    text = "It is a truth universally acknowledged. Short one. Is this the end of it all?"
    assert corpora.sentences(text, min_words=4) == [
        "It is a truth universally acknowledged.",
        "Is this the end of it all?",
    ]


@pytest.fixture(scope="module")
def minilm():
    entry = zoo.get("minilm")
    return entry, entry.load()


@pytest.mark.assets
def test_minilm_reproduces_the_published_word_similarity(minilm):
    entry, model = minilm
    metrics = entry.evaluate(model)
    assert metrics["wordsim353_spearman"] == pytest.approx(0.729, abs=0.005)
    assert metrics["simlex999_spearman"] == pytest.approx(0.446, abs=0.005)
    assert metrics["cosine_vs_fp32"] > 0.9999


@pytest.mark.assets
def test_minilm_embeddings_are_unit_vectors_and_calibration_is_not_eval_text(minilm):
    entry, model = minilm
    ids, mask = entry.example_inputs(4)
    assert ids.shape == mask.shape == (4, 128)
    with torch.no_grad():
        embeddings = model(ids, mask)
    assert embeddings.shape == (4, 384)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(4), atol=1e-5)
    calibration = {
        tuple(row.tolist()) for batch in entry.calibration_batches(4) for row in batch[0]
    }
    assert not calibration & {tuple(row.tolist()) for row in entry.example_inputs(148)[0]}


@pytest.mark.assets
def test_smollm2_perplexity_and_disjoint_calibration():
    entry = zoo.get("smollm2-135m")
    model = entry.load()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "Q4_1-derived" in entry.card
    metrics = entry.evaluate(model)
    assert 20 < metrics["perplexity_austen"] < 60  # measured 38.7
    assert 15 < metrics["perplexity_lee"] < 50  # measured 32.7
    (ids,) = entry.example_inputs(2)
    assert ids.shape == (2, 128)
    eval_windows = {tuple(w.tolist()) for w in entry.example_inputs(64, seq_len=512)[0]}
    calibration = {tuple(b[0][0].tolist()) for b in entry.calibration_batches(16)}
    assert not calibration & eval_windows


@pytest.mark.assets
def test_smollm2_is_profiled_on_meta_in_seconds():
    import time

    from torchslim.profile import profile

    entry = zoo.get("smollm2-135m")
    start = time.perf_counter()
    model = entry.meta_model()
    report = profile(model, (torch.zeros(1, 512, dtype=torch.long, device="meta"),))
    assert time.perf_counter() - start < 30
    assert report.params == 134_515_008
    layers, hidden, inner, kv, vocab, seq = 30, 576, 1536, 3 * 64, 49152, 512
    per_token = (
        layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner) + hidden * vocab
    )
    attention = layers * 2 * seq * seq * hidden  # QK^T and AV over all 9 heads of 64
    assert report.total.macs == seq * per_token + attention
    assert report.unsupported_ops == {}
