"""What an mmengine Runner checkpoint says about the config it was trained with.

A Runner checkpoint (mmpretrain, mmdet, mmseg) keeps the whole training
config as text in ``meta['cfg']``.  The converter needs a few facts from it,
above all the backbone type, which decides the stem pool the weights were
trained with (``ResNetReleasedStem``: padding 0 and ceil_mode; mmpretrain's,
mmdet's and mmseg's ``ResNet``: padding 1).  The text is parsed with
:mod:`ast`, never executed: a checkpoint is data, and its config may name
modules that are not installed here.
"""
from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any, Optional

__all__ = ['training_facts']


def _value(node: ast.AST) -> Any:
    """A literal, or the keyword arguments of a ``dict(...)`` call as a dict; None otherwise."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict':
        return {kw.arg: _value(kw.value) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.Dict):
        return {k.value: _value(v) for k, v in zip(node.keys, node.values)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def training_facts(checkpoint: Any) -> Optional[dict]:
    """``{'default_scope', 'model', 'backbone'}`` (type names) of a Runner checkpoint's config.

    ``None`` when ``checkpoint`` holds no config text (a bare state dict, a
    released file) or the text is not a Python config.
    """
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    text = meta.get('cfg') if isinstance(meta, Mapping) else None
    if not isinstance(text, str):
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            names[node.targets[0].id] = node.value
    model = _value(names['model']) if 'model' in names else None
    model = model if isinstance(model, dict) else {}
    backbone = model.get('backbone') if isinstance(model.get('backbone'), dict) else {}
    scope = _value(names['default_scope']) if 'default_scope' in names else None
    return dict(default_scope=scope if isinstance(scope, str) else None,
                model=model.get('type') if isinstance(model.get('type'), str) else None,
                backbone=backbone.get('type') if isinstance(backbone.get('type'), str) else None)
