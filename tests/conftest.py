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


@pytest.fixture(scope='session')
def latched_seg(tmp_path_factory):
    """A tiny FCN config and a checkpoint of it with every SSN layer latched (random weights)."""
    import ssn_plugins
    from ssn_plugins.builder import build_model
    from tiny_models import TINY_SEG
    folder = tmp_path_factory.mktemp('seg')
    config = folder / 'tiny.py'
    config.write_text(TINY_SEG)
    torch.manual_seed(0)
    model = build_model(str(config))
    for k, m in enumerate(m for m in model.modules() if ssn_plugins.is_switch_norm(m)):
        m.latch(k % 3, (k + 1) % 3)
    ckpt = folder / 'trained.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return str(config), str(ckpt)
