"""A module that fails at import, for the error-message test."""

raise RuntimeError("boom at import")
