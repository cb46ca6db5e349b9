from annfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_ANN: _ClassVar[Source]
    SOURCE_POPULAR: _ClassVar[Source]
    SOURCE_CO_ENGAGEMENT: _ClassVar[Source]
    SOURCE_CONTENT: _ClassVar[Source]
    SOURCE_EXPLORATION: _ClassVar[Source]
    SOURCE_TRENDING: _ClassVar[Source]
    SOURCE_SOCIAL: _ClassVar[Source]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_IMPRESSION: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_LIKE: _ClassVar[EventType]
SOURCE_UNSPECIFIED: Source
SOURCE_ANN: Source
SOURCE_POPULAR: Source
SOURCE_CO_ENGAGEMENT: Source
SOURCE_CONTENT: Source
SOURCE_EXPLORATION: Source
SOURCE_TRENDING: Source
SOURCE_SOCIAL: Source
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_IMPRESSION: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_LIKE: EventType

class SearchRequest(_message.Message):
    __slots__ = ("queries", "dim", "k", "params")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    queries: bytes
    dim: int
    k: int
    params: _common_pb2.SearchParams
    def __init__(self, queries: _Optional[bytes] = ..., dim: _Optional[int] = ..., k: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.SearchParams, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("ids", "scores", "num_queries", "k", "bundle_id", "coverage", "metric")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NUM_QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    ids: bytes
    scores: bytes
    num_queries: int
    k: int
    bundle_id: str
    coverage: _common_pb2.Coverage
    metric: str
    def __init__(self, ids: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., num_queries: _Optional[int] = ..., k: _Optional[int] = ..., bundle_id: _Optional[str] = ..., coverage: _Optional[_Union[_common_pb2.Coverage, _Mapping]] = ..., metric: _Optional[str] = ...) -> None: ...

class EngagementEvent(_message.Message):
    __slots__ = ("user_id", "item_id", "type", "timestamp", "country")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    item_id: int
    type: EventType
    timestamp: int
    country: str
    def __init__(self, user_id: _Optional[int] = ..., item_id: _Optional[int] = ..., type: _Optional[_Union[EventType, str]] = ..., timestamp: _Optional[int] = ..., country: _Optional[str] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("recent_item_ids", "timestamp", "country", "device")
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    recent_item_ids: _containers.RepeatedScalarFieldContainer[int]
    timestamp: int
    country: str
    device: str
    def __init__(self, recent_item_ids: _Optional[_Iterable[int]] = ..., timestamp: _Optional[int] = ..., country: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("user_id", "k", "context", "exclude_ids", "params", "include_titles")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TITLES_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    k: int
    context: Context
    exclude_ids: bytes
    params: _common_pb2.SearchParams
    include_titles: bool
    def __init__(self, user_id: _Optional[int] = ..., k: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., exclude_ids: _Optional[bytes] = ..., params: _Optional[_Union[_common_pb2.SearchParams, _Mapping]] = ..., include_titles: _Optional[bool] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("ids", "scores", "sources", "bundle_id", "coverage", "source_counts", "timings_ms", "titles", "variant", "source_masks", "dropped_sources")
    class SourceCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class DroppedSourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    TITLES_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MASKS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SOURCES_FIELD_NUMBER: _ClassVar[int]
    ids: bytes
    scores: bytes
    sources: bytes
    bundle_id: str
    coverage: _common_pb2.Coverage
    source_counts: _containers.ScalarMap[str, int]
    timings_ms: _containers.ScalarMap[str, float]
    titles: _containers.RepeatedScalarFieldContainer[str]
    variant: str
    source_masks: bytes
    dropped_sources: _containers.ScalarMap[str, str]
    def __init__(self, ids: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., sources: _Optional[bytes] = ..., bundle_id: _Optional[str] = ..., coverage: _Optional[_Union[_common_pb2.Coverage, _Mapping]] = ..., source_counts: _Optional[_Mapping[str, int]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., titles: _Optional[_Iterable[str]] = ..., variant: _Optional[str] = ..., source_masks: _Optional[bytes] = ..., dropped_sources: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RecordEngagementRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[EngagementEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[EngagementEvent, _Mapping]]] = ...) -> None: ...

class RecordEngagementResponse(_message.Message):
    __slots__ = ("applied", "bundle_id")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    applied: int
    bundle_id: str
    def __init__(self, applied: _Optional[int] = ..., bundle_id: _Optional[str] = ...) -> None: ...
