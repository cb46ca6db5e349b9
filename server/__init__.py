"""Index-shard server: serves one shard of a retrieval bundle over gRPC."""
