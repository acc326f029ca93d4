"""Feature anchoring (paper section 4): anchor sets and their sources."""

from sdl_anchor.anchoring.anchor_set import AnchorSet

__all__ = ["AnchorSet"]
