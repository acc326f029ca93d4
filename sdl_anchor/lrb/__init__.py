"""The Linear Representation Bench: synthetic representations with full ground truth."""

from sdl_anchor.lrb.bench import LinearRepresentationBench, LRBBatch, LRBConfig
from sdl_anchor.lrb.codes import SparseCodes
from sdl_anchor.lrb.data import LRBDataset, LRBStream
from sdl_anchor.lrb.feature_matrix import FeatureMatrix, make_feature_matrix, welch_bound
from sdl_anchor.lrb.hierarchy import FeatureHierarchy

__all__ = [
    "FeatureHierarchy",
    "FeatureMatrix",
    "LRBBatch",
    "LRBConfig",
    "LRBDataset",
    "LRBStream",
    "LinearRepresentationBench",
    "SparseCodes",
    "make_feature_matrix",
    "welch_bound",
]
