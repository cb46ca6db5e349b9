from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SearchParams(_message.Message):
    __slots__ = ("ef_search", "nprobe", "rerank")
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    ef_search: int
    nprobe: int
    rerank: int
    def __init__(self, ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., rerank: _Optional[int] = ...) -> None: ...

class Coverage(_message.Message):
    __slots__ = ("shards_answered", "shards_asked", "answered_shard_ids", "degraded")
    SHARDS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    SHARDS_ASKED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_SHARD_IDS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    shards_answered: int
    shards_asked: int
    answered_shard_ids: _containers.RepeatedScalarFieldContainer[int]
    degraded: bool
    def __init__(self, shards_answered: _Optional[int] = ..., shards_asked: _Optional[int] = ..., answered_shard_ids: _Optional[_Iterable[int]] = ..., degraded: _Optional[bool] = ...) -> None: ...
