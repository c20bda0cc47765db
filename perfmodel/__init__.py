"""perfmodel: symbolic FLOP, byte, roofline and tiling models for TPUs.

Quick use::

    import perfmodel
    p = perfmodel.predict("matmul", chip="v5e", M=8192, K=8192, N=8192)
    p.roofline.lower_s, p.roofline.bound, p.formula.flops
"""

from perfmodel.api import Prediction, predict
from perfmodel.hardware import CATALOG, DEFAULT_CHIPS, Chip, get_chip
from perfmodel.ops import OPS, get_op
from perfmodel.roofline import Roofline, roofline
from perfmodel.transformer import TransformerShape

__all__ = ["CATALOG", "DEFAULT_CHIPS", "Chip", "OPS", "Prediction", "Roofline", "TransformerShape",
           "get_chip", "get_op", "predict", "roofline"]
