"""Feature anchoring (paper section 4): anchor sets, the anchor loss, and anchor sources."""

from sdl_anchor.anchoring.anchor_set import AnchorSet
from sdl_anchor.anchoring.clt_anchors import CLTAnchors
from sdl_anchor.anchoring.loss import anchor_loss, anchor_loss_cosine, anchor_loss_mse, mean_anchor_cosine
from sdl_anchor.anchoring.sources import class_mean_anchors, probe_anchors

__all__ = [
    "AnchorSet",
    "CLTAnchors",
    "anchor_loss",
    "anchor_loss_cosine",
    "anchor_loss_mse",
    "class_mean_anchors",
    "mean_anchor_cosine",
    "probe_anchors",
]
