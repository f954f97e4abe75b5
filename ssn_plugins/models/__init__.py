"""Backbones that configs name: ``ResNetReleasedStem`` (registered in mmengine's root ``MODELS``)."""
from .resnet_stem import (RELEASED_SSN_STEM, TORCHVISION_STEM, ResNetReleasedStem, stem_pool_of,
                          use_released_stem)

__all__ = ['RELEASED_SSN_STEM', 'TORCHVISION_STEM', 'ResNetReleasedStem', 'stem_pool_of',
           'use_released_stem']
