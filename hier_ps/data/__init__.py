"""Data: columnar example chunks, the streaming Parquet reader, synthetic data with a known oracle, Criteo conversion.

Keys of every slot become uint64: integer columns bit for bit, string columns through a stable 64-bit hash
(:func:`hash_strings`), list columns as multi-hot bags.
"""

from hier_ps.data.chunk import ExampleChunk
from hier_ps.data.criteo import convert_criteo
from hier_ps.data.hashing import hash_strings
from hier_ps.data.reader import ParquetReader
from hier_ps.data.synthetic import PRESETS, generate_synthetic

__all__ = ["PRESETS", "ExampleChunk", "ParquetReader", "convert_criteo", "generate_synthetic", "hash_strings"]
