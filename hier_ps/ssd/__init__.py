"""SSD tier: the durable, complete model on disk — an append-only row store with a key index and atomic commits."""

from hier_ps.ssd.store import SSDStore

__all__ = ["SSDStore"]
