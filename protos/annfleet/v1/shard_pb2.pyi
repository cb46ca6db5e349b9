from annfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShardSearchRequest(_message.Message):
    __slots__ = ("queries", "dim", "k", "params", "bundle_id", "exclude_ids")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    queries: bytes
    dim: int
    k: int
    params: _common_pb2.SearchParams
    bundle_id: str
    exclude_ids: bytes
    def __init__(self, queries: _Optional[bytes] = ..., dim: _Optional[int] = ..., k: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.SearchParams, _Mapping]] = ..., bundle_id: _Optional[str] = ..., exclude_ids: _Optional[bytes] = ...) -> None: ...

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

class ShardStreamRequest(_message.Message):
    __slots__ = ("request_id", "timeout_s", "search", "cancel")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    timeout_s: float
    search: ShardSearchRequest
    cancel: bool
    def __init__(self, request_id: _Optional[int] = ..., timeout_s: _Optional[float] = ..., search: _Optional[_Union[ShardSearchRequest, _Mapping]] = ..., cancel: _Optional[bool] = ...) -> None: ...

class ShardStreamReply(_message.Message):
    __slots__ = ("request_id", "code", "message", "search")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    code: int
    message: str
    search: ShardSearchResponse
    def __init__(self, request_id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., search: _Optional[_Union[ShardSearchResponse, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("bundle_id", "shard_id", "num_shards", "num_items", "dim", "metric", "index_type", "index_params", "max_k", "max_batch", "bundles")
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
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
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
    bundles: _containers.RepeatedCompositeFieldContainer[HeldBundle]
    def __init__(self, bundle_id: _Optional[str] = ..., shard_id: _Optional[int] = ..., num_shards: _Optional[int] = ..., num_items: _Optional[int] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., index_type: _Optional[str] = ..., index_params: _Optional[str] = ..., max_k: _Optional[int] = ..., max_batch: _Optional[int] = ..., bundles: _Optional[_Iterable[_Union[HeldBundle, _Mapping]]] = ...) -> None: ...

class HeldBundle(_message.Message):
    __slots__ = ("bundle_id", "active", "path", "num_shards", "dim", "metric", "index_type", "bundle_items", "upserted_items", "deleted_items", "num_items", "memory_bytes", "loaded_at", "updates_log", "update_records")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DELETED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATES_LOG_FIELD_NUMBER: _ClassVar[int]
    UPDATE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    active: bool
    path: str
    num_shards: int
    dim: int
    metric: str
    index_type: str
    bundle_items: int
    upserted_items: int
    deleted_items: int
    num_items: int
    memory_bytes: int
    loaded_at: float
    updates_log: str
    update_records: int
    def __init__(self, bundle_id: _Optional[str] = ..., active: _Optional[bool] = ..., path: _Optional[str] = ..., num_shards: _Optional[int] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., index_type: _Optional[str] = ..., bundle_items: _Optional[int] = ..., upserted_items: _Optional[int] = ..., deleted_items: _Optional[int] = ..., num_items: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., loaded_at: _Optional[float] = ..., updates_log: _Optional[str] = ..., update_records: _Optional[int] = ...) -> None: ...

class PrepareRequest(_message.Message):
    __slots__ = ("bundle", "expect_num_shards", "expect_dim")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    EXPECT_NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    EXPECT_DIM_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    expect_num_shards: int
    expect_dim: int
    def __init__(self, bundle: _Optional[str] = ..., expect_num_shards: _Optional[int] = ..., expect_dim: _Optional[int] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("bundle_id",)
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    def __init__(self, bundle_id: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("bundle_id",)
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    def __init__(self, bundle_id: _Optional[str] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("bundle_id", "ids", "vectors", "dim")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    ids: bytes
    vectors: bytes
    dim: int
    def __init__(self, bundle_id: _Optional[str] = ..., ids: _Optional[bytes] = ..., vectors: _Optional[bytes] = ..., dim: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("bundle_id", "ids", "missing_ok")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    MISSING_OK_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    ids: bytes
    missing_ok: bool
    def __init__(self, bundle_id: _Optional[str] = ..., ids: _Optional[bytes] = ..., missing_ok: _Optional[bool] = ...) -> None: ...

class UpdateResponse(_message.Message):
    __slots__ = ("bundle_id", "shard_id", "inserted", "replaced", "deleted", "missing", "bundle")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    shard_id: int
    inserted: int
    replaced: int
    deleted: int
    missing: int
    bundle: HeldBundle
    def __init__(self, bundle_id: _Optional[str] = ..., shard_id: _Optional[int] = ..., inserted: _Optional[int] = ..., replaced: _Optional[int] = ..., deleted: _Optional[int] = ..., missing: _Optional[int] = ..., bundle: _Optional[_Union[HeldBundle, _Mapping]] = ...) -> None: ...

class CarryUpdatesRequest(_message.Message):
    __slots__ = ("from_bundle_id", "to_bundle_id")
    FROM_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    TO_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    from_bundle_id: str
    to_bundle_id: str
    def __init__(self, from_bundle_id: _Optional[str] = ..., to_bundle_id: _Optional[str] = ...) -> None: ...

class CarryUpdatesResponse(_message.Message):
    __slots__ = ("shard_id", "deleted", "deletes_skipped", "upserted_present", "missing_ids", "bundle")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    DELETES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_PRESENT_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    deleted: int
    deletes_skipped: int
    upserted_present: int
    missing_ids: bytes
    bundle: HeldBundle
    def __init__(self, shard_id: _Optional[int] = ..., deleted: _Optional[int] = ..., deletes_skipped: _Optional[int] = ..., upserted_present: _Optional[int] = ..., missing_ids: _Optional[bytes] = ..., bundle: _Optional[_Union[HeldBundle, _Mapping]] = ...) -> None: ...
