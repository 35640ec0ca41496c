"""Host-RAM tier: a bounded write-back cache of rows (LRU or LFU) over the SSD tier, and its row mover."""

from hier_ps.hostmem.cache import HostCache

__all__ = ["HostCache"]
