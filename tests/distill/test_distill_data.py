"""What students are trained on: training splits and unlabelled text, never the eval data."""

import pytest
import torch

from torchslim.distill.data import training_data, unlabelled_texts
from torchslim.zoo import corpora, get


@pytest.mark.assets
def test_unlabelled_text_never_contains_the_eval_text_or_the_word_pairs_scores():
    texts = unlabelled_texts(words=500)
    held_out = set(get("minilm").held_out_sentences())
    assert len(texts) > 20000 and not held_out & set(texts)
    assert not set(corpora.lee_corpus("test")) & set(texts)
    words = texts[-500:]
    assert all(" " not in w for w in words) and "the" in words  # one-word texts at the end


@pytest.mark.assets
def test_image_training_data_is_a_seeded_subset_of_the_training_split():
    (inputs, labels), output_loss = training_data(get("fashion-resnet20"), subset=100, seed=3)
    again, _ = training_data(get("fashion-resnet20"), subset=100, seed=3)
    assert output_loss == "kd" and inputs.shape == (100, 1, 28, 28) and labels.shape == (100,)
    assert torch.equal(inputs, again[0])
    train_inputs, _ = get("fashion-resnet20").train_data()
    assert any(torch.equal(inputs[0], row) for row in train_inputs[:60000])
