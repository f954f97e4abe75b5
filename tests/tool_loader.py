"""The repository's tools/NAME.py scripts as modules, for tests that call their ``main``.

The tools are scripts, not an importable package; conftest puts tests/ on
``sys.path``, so test modules import this helper as ``from tool_loader import ...``.
"""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name: str):
    """tools/NAME.py, freshly executed as the module ``ssn_tool_NAME``."""
    spec = importlib.util.spec_from_file_location(f'ssn_tool_{name}',
                                                  os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(name: str, *args) -> str:
    """tools/NAME.py's main exits non-zero with one line (no traceback); returns it."""
    with pytest.raises(SystemExit) as exit_info:
        load_tool(name).main([str(a) for a in args])
    message = exit_info.value.code
    assert isinstance(message, str) and '\n' not in message.strip(), message
    return message
