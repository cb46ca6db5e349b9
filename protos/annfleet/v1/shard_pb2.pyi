from annfleet.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShardSearchRequest(_message.Message):
    __slots__ = ("queries", "dim", "k", "params", "bundle_id")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    queries: bytes
    dim: int
    k: int
    params: _common_pb2.SearchParams
    bundle_id: str
    def __init__(self, queries: _Optional[bytes] = ..., dim: _Optional[int] = ..., k: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.SearchParams, _Mapping]] = ..., bundle_id: _Optional[str] = ...) -> None: ...

class ShardSearchResponse(_message.Message):
    __slots__ = ("ids", "scores", "num_queries", "k", "shard_id", "bundle_id", "metric")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NUM_QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    ids: bytes
    scores: bytes
    num_queries: int
    k: int
    shard_id: int
    bundle_id: str
    metric: str
    def __init__(self, ids: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., num_queries: _Optional[int] = ..., k: _Optional[int] = ..., shard_id: _Optional[int] = ..., bundle_id: _Optional[str] = ..., metric: _Optional[str] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("bundle_id", "shard_id", "num_shards", "num_items", "dim", "metric", "index_type", "index_params", "max_k", "max_batch")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    shard_id: int
    num_shards: int
    num_items: int
    dim: int
    metric: str
    index_type: str
    index_params: str
    max_k: int
    max_batch: int
    def __init__(self, bundle_id: _Optional[str] = ..., shard_id: _Optional[int] = ..., num_shards: _Optional[int] = ..., num_items: _Optional[int] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., index_type: _Optional[str] = ..., index_params: _Optional[str] = ..., max_k: _Optional[int] = ..., max_batch: _Optional[int] = ...) -> None: ...
