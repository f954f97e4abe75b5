"""Small constant tensors on the device, made once per (key, device) in eager mode.

Creating a constant from Python values on CUDA is a host-to-device copy that
waits for the device; the hot paths take theirs from here instead.  Under
``torch.compile`` or a fake-tensor trace the constant is made inline (it
becomes a graph constant, and a traced function must not write the cache).
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

from ..compat import is_tracing

__all__ = ['cached_constant']

_CACHE: dict = {}


def cached_constant(key: Hashable, make: Callable[[], Any]) -> Any:
    """``make()`` once per ``key`` (which must name the dtype and device it depends on)."""
    if is_tracing():
        return make()
    value = _CACHE.get(key)
    if value is None:
        value = _CACHE[key] = make()
    return value
