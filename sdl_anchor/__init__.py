"""sdl-anchor: feature anchoring, theory-guided resampling, absorption diagnostics and the Linear
Representation Bench for SAELens / TransformerLens (Tang et al., arXiv 2512.05534)."""

from sdl_anchor.anchoring import AnchorSet
from sdl_anchor.lrb import LinearRepresentationBench, LRBBatch
from sdl_anchor.metrics import recovery

__version__ = "0.1.0"


def train_on_bench(*args, **kwargs):
    """Train a SAELens TrainingSAE on LRB data; see :func:`sdl_anchor.integrations.training.train_on_bench`."""
    from sdl_anchor.integrations.training import train_on_bench as _train_on_bench

    return _train_on_bench(*args, **kwargs)


__all__ = ["AnchorSet", "LRBBatch", "LinearRepresentationBench", "__version__", "recovery", "train_on_bench"]
