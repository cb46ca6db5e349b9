from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdatesPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATES_UNSPECIFIED: _ClassVar[UpdatesPolicy]
    UPDATES_CARRY: _ClassVar[UpdatesPolicy]
    UPDATES_DROP: _ClassVar[UpdatesPolicy]

class RolloutPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[RolloutPhase]
    PHASE_PREPARE: _ClassVar[RolloutPhase]
    PHASE_ROUTER_LOAD: _ClassVar[RolloutPhase]
    PHASE_CARRY_UPDATES: _ClassVar[RolloutPhase]
    PHASE_FLIP: _ClassVar[RolloutPhase]
    PHASE_DONE: _ClassVar[RolloutPhase]
UPDATES_UNSPECIFIED: UpdatesPolicy
UPDATES_CARRY: UpdatesPolicy
UPDATES_DROP: UpdatesPolicy
PHASE_UNSPECIFIED: RolloutPhase
PHASE_PREPARE: RolloutPhase
PHASE_ROUTER_LOAD: RolloutPhase
PHASE_CARRY_UPDATES: RolloutPhase
PHASE_FLIP: RolloutPhase
PHASE_DONE: RolloutPhase

class RolloutRequest(_message.Message):
    __slots__ = ("bundle", "canary_percent", "grace_s", "holder", "updates", "force")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    canary_percent: float
    grace_s: float
    holder: str
    updates: UpdatesPolicy
    force: bool
    def __init__(self, bundle: _Optional[str] = ..., canary_percent: _Optional[float] = ..., grace_s: _Optional[float] = ..., holder: _Optional[str] = ..., updates: _Optional[_Union[UpdatesPolicy, str]] = ..., force: _Optional[bool] = ...) -> None: ...

class RolloutProgress(_message.Message):
    __slots__ = ("phase", "shard_id", "replica", "target", "message", "elapsed_s", "status", "missing_ids")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    phase: RolloutPhase
    shard_id: int
    replica: int
    target: str
    message: str
    elapsed_s: float
    status: RolloutStatus
    missing_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, phase: _Optional[_Union[RolloutPhase, str]] = ..., shard_id: _Optional[int] = ..., replica: _Optional[int] = ..., target: _Optional[str] = ..., message: _Optional[str] = ..., elapsed_s: _Optional[float] = ..., status: _Optional[_Union[RolloutStatus, _Mapping]] = ..., missing_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("min_recall", "force")
    MIN_RECALL_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    min_recall: float
    force: bool
    def __init__(self, min_recall: _Optional[float] = ..., force: _Optional[bool] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("skip_replicas",)
    SKIP_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    skip_replicas: bool
    def __init__(self, skip_replicas: _Optional[bool] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("name", "bundle_id", "percent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    bundle_id: str
    percent: float
    def __init__(self, name: _Optional[str] = ..., bundle_id: _Optional[str] = ..., percent: _Optional[float] = ...) -> None: ...

class ReplicaBundles(_message.Message):
    __slots__ = ("shard_id", "replica", "target", "active_bundle_id", "held_bundle_ids", "error")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_BUNDLE_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    replica: int
    target: str
    active_bundle_id: str
    held_bundle_ids: _containers.RepeatedScalarFieldContainer[str]
    error: str
    def __init__(self, shard_id: _Optional[int] = ..., replica: _Optional[int] = ..., target: _Optional[str] = ..., active_bundle_id: _Optional[str] = ..., held_bundle_ids: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ...) -> None: ...

class RecallGauge(_message.Message):
    __slots__ = ("bundle_id", "shard_id", "k", "recall", "samples", "merged")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    shard_id: int
    k: int
    recall: float
    samples: int
    merged: bool
    def __init__(self, bundle_id: _Optional[str] = ..., shard_id: _Optional[int] = ..., k: _Optional[int] = ..., recall: _Optional[float] = ..., samples: _Optional[int] = ..., merged: _Optional[bool] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("stable_bundle_id", "variants", "previous_bundle_id", "previous_release_at", "rollout_holder", "rollout_started_at", "replicas", "recall", "blocked_items")
    STABLE_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RELEASE_AT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_HOLDER_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    stable_bundle_id: str
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    previous_bundle_id: str
    previous_release_at: float
    rollout_holder: str
    rollout_started_at: float
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaBundles]
    recall: _containers.RepeatedCompositeFieldContainer[RecallGauge]
    blocked_items: int
    def __init__(self, stable_bundle_id: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., previous_bundle_id: _Optional[str] = ..., previous_release_at: _Optional[float] = ..., rollout_holder: _Optional[str] = ..., rollout_started_at: _Optional[float] = ..., replicas: _Optional[_Iterable[_Union[ReplicaBundles, _Mapping]]] = ..., recall: _Optional[_Iterable[_Union[RecallGauge, _Mapping]]] = ..., blocked_items: _Optional[int] = ...) -> None: ...

class BlockRequest(_message.Message):
    __slots__ = ("item_ids", "unblock")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    UNBLOCK_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    unblock: bool
    def __init__(self, item_ids: _Optional[_Iterable[int]] = ..., unblock: _Optional[bool] = ...) -> None: ...

class BlockResponse(_message.Message):
    __slots__ = ("blocked",)
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    blocked: int
    def __init__(self, blocked: _Optional[int] = ...) -> None: ...

class BlockedRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class BlockedItems(_message.Message):
    __slots__ = ("count", "item_ids")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    count: int
    item_ids: bytes
    def __init__(self, count: _Optional[int] = ..., item_ids: _Optional[bytes] = ...) -> None: ...
