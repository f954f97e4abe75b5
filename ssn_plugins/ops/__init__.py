from .sparsestmax import SPARSESTMAX_MODES, sparsemax, sparsestmax

__all__ = ['SPARSESTMAX_MODES', 'sparsemax', 'sparsestmax']
