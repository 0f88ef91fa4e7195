"""Pure logic of Observatory: protocol, filters, index, ingest validation, state, config.

Nothing in this package performs I/O; ``tests/core/test_purity.py`` keeps it that way.
"""
