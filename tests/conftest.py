import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# tests import their helpers (tests/models.py) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny convs are slower with many threads on a busy machine; restore the count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
