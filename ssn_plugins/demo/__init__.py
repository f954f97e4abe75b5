"""The synthetic data set behind the embedded demo (``make demo``)."""
from .shapes import DEMO_CLASSES, make_demo_dataset, make_split

__all__ = ['DEMO_CLASSES', 'make_demo_dataset', 'make_split']
