"""Router: scatter-gather over the index shards, sources, the Retrieval service.

The router process imports neither faiss nor torch (torch only through ``tower.py``, for a
bundle with a user tower); the rules it shares with shards and clients live in core
(``annfleet.merge``, ``annfleet.validation``, ``annfleet.names``).
"""
