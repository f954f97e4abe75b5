import os
import sys

import pytest
import torch

# Test helpers (the float64 references) live beside the tests; pytest runs in
# importlib mode because the mmseg wheel installs a top-level `tests` package.
sys.path.insert(0, os.path.dirname(__file__))
# The lab (measurements and experiments, not installed with the package) sits at the repo root.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
    """A tiny demo data set where the demo configs expect it (data/ssn_demo, relative to the cwd)."""
    from ssn_plugins.demo import make_demo_dataset
    monkeypatch.chdir(tmp_path)
    make_demo_dataset(str(tmp_path / 'data' / 'ssn_demo'), num_train=4, num_val=2, size=64, seed=0)
    return tmp_path
