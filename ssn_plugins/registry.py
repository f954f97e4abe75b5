"""Registries of the ``ssn_plugins`` scope, for configs that inherit ``'ssn_plugins::...'``.

Everything of this package is registered in mmengine's root registries, so
mmdet and mmseg both find it. A base read through ``ssn_plugins::`` gets
``_scope_='ssn_plugins'`` on its dicts that had no scope yet (the
``custom_hooks``; in the demo configs also ``train_cfg`` and
``param_scheduler``), and mmengine then builds them in the ``ssn_plugins``
child of the root registry, importing this module to find it. These
children hold nothing themselves: a name is looked up in their parent,
the root. Without them mmengine warns for every such dict and falls back
to the root.
"""
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.registry import LOOPS as ROOT_LOOPS
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import PARAM_SCHEDULERS as ROOT_PARAM_SCHEDULERS
from mmengine.registry import WEIGHT_INITIALIZERS as ROOT_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

__all__ = ['HOOKS', 'LOOPS', 'MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS',
           'WEIGHT_INITIALIZERS']

_SCOPE = dict(scope='ssn_plugins', locations=['ssn_plugins'])
HOOKS = Registry('hook', parent=ROOT_HOOKS, **_SCOPE)
LOOPS = Registry('loop', parent=ROOT_LOOPS, **_SCOPE)
MODELS = Registry('model', parent=ROOT_MODELS, **_SCOPE)
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=ROOT_OPTIM_WRAPPER_CONSTRUCTORS, **_SCOPE)
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=ROOT_PARAM_SCHEDULERS, **_SCOPE)
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=ROOT_WEIGHT_INITIALIZERS, **_SCOPE)
