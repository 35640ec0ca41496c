"""Data: columnar example chunks, the streaming Parquet reader, synthetic data with a known oracle, Criteo conversion.

The reader streams Parquet files in order and cuts them into :class:`ExampleChunk` s of a fixed number of examples:
labels and dense features as float32 matrices, and each sparse slot as a CSR bag of uint64 keys per example. Integer
columns become keys bit for bit, string columns through a stable 64-bit hash (:func:`hash_strings`), list columns
are multi-hot bags. :func:`generate_synthetic` writes Criteo-like data from a planted model whose oracle AUC is known;
:func:`convert_criteo` turns the public Criteo TSV files into Parquet that the reader takes as is.
"""

from hier_ps.data.chunk import ExampleChunk
from hier_ps.data.criteo import convert_criteo
from hier_ps.data.hashing import hash_strings
from hier_ps.data.reader import ParquetReader
from hier_ps.data.synthetic import PRESETS, Preset, generate_synthetic

__all__ = ["PRESETS", "ExampleChunk", "ParquetReader", "Preset", "convert_criteo", "generate_synthetic", "hash_strings"]
