import os
import sys

import pytest
import torch

# Test helpers (the float64 references) live beside the tests; pytest runs in
# importlib mode because the mmseg wheel installs a top-level `tests` package.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
