"""Host-RAM tier: a bounded write-back LRU cache of rows over the SSD tier."""

from hier_ps.hostmem.cache import HostCache

__all__ = ["HostCache"]
