"""annfleet: a gRPC cluster for the candidate-retrieval stage of a recommender.

This package (``core/`` in the repository) holds what every part shares: config, the
bundle reader, partitioning, metrics, the CLI, and the wire modules both sides of an RPC use
(``arrays``, ``merge``, ``validation``, ``names``, ``errors``). It imports nothing itself, and
the wire modules need only numpy, grpcio and the generated code, so ``annfleet.client`` works
on the base install (no faiss, torch, yaml or prometheus_client).
"""

__version__ = "0.1.0"
