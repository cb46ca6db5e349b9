"""Router: scatter-gather over the index shards, merge, sources, the Retrieval service.

Kept import-light: ``annfleet.router.merge`` is numpy-only so the client can reuse it.
"""
