"""Released SN/SSN and BN ResNet v1 checkpoints for mmdet/mmseg: conversion and strict loading.

Importing it registers ``SwitchNormPretrained`` in mmengine's root
``WEIGHT_INITIALIZERS``.  The backbone with the released stem pool is in
:mod:`ssn_plugins.models`.
"""
from .convert import convert_checkpoint, convert_state_dict
from .layout import ConversionError, parse_resnet_v1
from .pretrained import SwitchNormPretrained, check_state_dict, relearn_selection

__all__ = [
    'convert_checkpoint', 'convert_state_dict',
    'ConversionError', 'parse_resnet_v1', 'SwitchNormPretrained', 'check_state_dict',
    'relearn_selection'
]
