"""annfleet: a gRPC cluster for the candidate-retrieval stage of a recommender.

This package (``core/`` in the repository) holds what every part shares: config, the
bundle format, partitioning, array codecs, errors, metrics, the CLI. It imports neither
faiss nor torch, so ``annfleet.client`` stays installable without them.
"""

__version__ = "0.1.0"
