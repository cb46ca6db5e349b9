"""Result types and the protobuf <-> numpy translation shared by every client.

Uses only core's wire modules (arrays, merge, validation, names). Whatever they or numpy and
protobuf raise leaves this module as an ``annfleet.client`` error: arguments that cannot be
encoded as ``InvalidArgument``, a response that does not decode as ``AnnfleetError``
(INTERNAL).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import grpc
import numpy as np

from annfleet import errors as core_errors
from annfleet.arrays import F32, I64, U8, U32, decode_ids, decode_rows, to_bytes
from annfleet.client.errors import AnnfleetError, InvalidArgument
from annfleet.merge import merge_rows
from annfleet.names import event_type_value, mask_names, source_name
from annfleet.v1 import common_pb2, retrieval_pb2, shard_pb2
from annfleet.validation import higher_is_better

P = ParamSpec("P")
T = TypeVar("T")
# What encoding a caller's arguments or decoding a response can raise below the client.
_LOWER_ERRORS = (core_errors.AnnfleetError, ValueError, TypeError, OverflowError)


def _raising(
    make: Callable[[Exception], AnnfleetError],
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator: what ``_LOWER_ERRORS`` a call raises leaves it as ``make(exc)``."""

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return func(*args, **kwargs)
            except AnnfleetError:
                raise
            except _LOWER_ERRORS as exc:
                raise make(exc) from exc

        return wrapper

    return decorate


# Arguments that cannot become a request -> InvalidArgument (nothing is sent).
_from_caller = _raising(lambda exc: InvalidArgument(str(exc)))
# A response that does not decode -> AnnfleetError with code INTERNAL.
_from_server = _raising(
    lambda exc: AnnfleetError(
        f"malformed response from the server: {exc}", grpc.StatusCode.INTERNAL
    )
)


@dataclass(frozen=True)
class Coverage:
    shards_answered: int
    shards_asked: int
    answered_shard_ids: tuple[int, ...]
    degraded: bool

    @property
    def fraction(self) -> float:
        return self.shards_answered / self.shards_asked if self.shards_asked else 0.0

    @classmethod
    def from_proto(cls, c: common_pb2.Coverage) -> Coverage:
        return cls(c.shards_answered, c.shards_asked, tuple(c.answered_shard_ids), c.degraded)


@dataclass(frozen=True)
class SearchResult:
    ids: np.ndarray  # (nq, k) int64, -1 where a row has fewer than k hits
    scores: np.ndarray  # (nq, k) float32, metric units ("ip": higher is better)
    bundle_id: str
    coverage: Coverage
    metric: str


@dataclass(frozen=True)
class RetrieveResult:
    ids: np.ndarray  # (n,) int64, best first, n <= k
    scores: np.ndarray  # (n,) float32; comparable within one source only
    sources: np.ndarray  # (n,) uint8 Source code of each candidate's best-scoring source
    bundle_id: str
    coverage: Coverage
    titles: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    source_counts: dict[str, int] = field(default_factory=dict)
    variant: str = ""  # "stable" or "canary": which of the router's live bundles answered
    # (n,) uint32: bit (1 << Source code) for every source that returned the candidate.
    source_masks: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint32))
    # Sources dropped for this request -> why ("budget", "error: ...").
    dropped_sources: dict[str, str] = field(default_factory=dict)

    @property
    def source_names(self) -> list[str]:
        """Each candidate's best-scoring source."""
        return [source_name(s) for s in self.sources]

    @property
    def sources_per_candidate(self) -> list[list[str]]:
        """Every source that returned each candidate (sorted by Source code)."""
        return [mask_names(int(m)) for m in self.source_masks]


@dataclass(frozen=True)
class Engagement:
    """One event for ``record_engagement``: ``type`` is "impression", "click", "view" or
    "like" (or the EventType value); ``timestamp`` unix seconds, 0 = now."""

    user_id: int
    item_id: int
    type: str | int = "click"
    timestamp: int = 0
    country: str = ""


@_from_caller
def engagement_request(
    events: Iterable[Engagement | tuple[int, int] | tuple[int, int, str | int]],
) -> retrieval_pb2.RecordEngagementRequest:
    """Events (``Engagement`` or ``(user_id, item_id[, type])`` tuples) -> the request."""
    out = []
    for e in events:
        event = e if isinstance(e, Engagement) else Engagement(*e)
        kind = event.type if isinstance(event.type, int) else event_type_value(event.type)
        out.append(
            retrieval_pb2.EngagementEvent(
                user_id=event.user_id,
                item_id=event.item_id,
                type=kind,  # type: ignore[arg-type]
                timestamp=event.timestamp,
                country=event.country,
            )
        )
    return retrieval_pb2.RecordEngagementRequest(events=out)


@_from_caller
def as_queries(vectors: np.ndarray | Sequence[float]) -> np.ndarray:
    """(d,) or (nq, d) -> (nq, d) float32."""
    queries = np.asarray(vectors, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2:
        raise InvalidArgument(f"vectors must be (d,) or (nq, d), got shape {queries.shape}")
    return queries


def _unsigned(value: int, message: str) -> int:
    """A value for a uint32 field: a negative one is InvalidArgument(message) here, not
    protobuf's "Value out of range: -5", which names no argument."""
    if isinstance(value, int) and value < 0:
        raise InvalidArgument(f"{message}, got {value}")
    return value


@_from_caller
def search_params(ef_search: int, nprobe: int, rerank: int) -> common_pb2.SearchParams:
    given = {"ef_search": ef_search, "nprobe": nprobe, "rerank": rerank}
    for name, value in given.items():
        _unsigned(value, f"{name} must be >= 0 (0 = the server's default)")
    return common_pb2.SearchParams(**given)


@_from_caller
def search_request(
    queries: np.ndarray, k: int, params: common_pb2.SearchParams
) -> retrieval_pb2.SearchRequest:
    return retrieval_pb2.SearchRequest(
        queries=to_bytes(queries, F32),
        dim=queries.shape[1],
        k=_unsigned(k, "k must be > 0"),
        params=params,
    )


@_from_caller
def shard_request(
    queries: np.ndarray, k: int, params: common_pb2.SearchParams
) -> shard_pb2.ShardSearchRequest:
    return shard_pb2.ShardSearchRequest(
        queries=to_bytes(queries, F32),
        dim=queries.shape[1],
        k=_unsigned(k, "k must be > 0"),
        params=params,
    )


@_from_caller
def retrieve_request(
    user_id: int,
    k: int,
    *,
    recent_items: Iterable[int] = (),
    timestamp: int = 0,
    exclude: Iterable[int] = (),
    include_titles: bool = False,
    country: str = "",
    device: str = "",
    params: common_pb2.SearchParams | None = None,
) -> retrieval_pb2.RetrieveRequest:
    return retrieval_pb2.RetrieveRequest(
        user_id=user_id,
        k=_unsigned(k, "k must be > 0"),
        context=retrieval_pb2.Context(
            recent_item_ids=list(recent_items), timestamp=timestamp, country=country, device=device
        ),
        exclude_ids=to_bytes(np.fromiter(exclude, dtype=np.int64), I64),
        include_titles=include_titles,
        params=params,
    )


@_from_server
def search_result(r: retrieval_pb2.SearchResponse) -> SearchResult:
    return SearchResult(
        ids=decode_rows(r.ids, I64, r.num_queries, r.k, name="ids"),
        scores=decode_rows(r.scores, F32, r.num_queries, r.k, name="scores"),
        bundle_id=r.bundle_id,
        coverage=Coverage.from_proto(r.coverage),
        metric=r.metric,
    )


@_from_server
def retrieve_result(r: retrieval_pb2.RetrieveResponse) -> RetrieveResult:
    ids = decode_ids(r.ids, name="ids")
    scores = decode_rows(r.scores, F32, 1, len(ids), name="scores")[0]
    sources = decode_rows(r.sources, U8, 1, len(ids), name="sources")[0]
    if r.source_masks:
        masks = decode_rows(r.source_masks, U32, 1, len(ids), name="source_masks")[0]
    else:  # a router before source masks: each candidate's one source
        masks = (np.uint32(1) << sources.astype(np.uint32)).astype(np.uint32)
    return RetrieveResult(
        ids=ids,
        scores=scores,
        sources=sources,
        bundle_id=r.bundle_id,
        coverage=Coverage.from_proto(r.coverage),
        titles=tuple(r.titles),
        timings_ms=dict(r.timings_ms),
        source_counts=dict(r.source_counts),
        variant=r.variant,
        source_masks=masks,
        dropped_sources=dict(r.dropped_sources),
    )


@_from_server
def merge_shard_responses(
    responses: Sequence[shard_pb2.ShardSearchResponse | BaseException], k: int
) -> SearchResult:
    """Client-side scatter: merge the shards that answered; coverage says which did.

    When no shard answered, the first failure is raised (as an ``annfleet.client`` error).
    """
    ok = [r for r in responses if isinstance(r, shard_pb2.ShardSearchResponse)]
    if not ok:
        error = next(r for r in responses if isinstance(r, BaseException))
        if isinstance(error, AnnfleetError) or not isinstance(error, Exception):
            raise error  # a client error already, or a cancellation to propagate
        raise AnnfleetError(f"no shard answered: {error!r}") from error
    nq = ok[0].num_queries
    ids = np.concatenate([decode_rows(r.ids, I64, nq, r.k, name="ids") for r in ok], axis=1)
    scores = np.concatenate(
        [decode_rows(r.scores, F32, nq, r.k, name="scores") for r in ok], axis=1
    )
    metric = ok[0].metric
    merged_ids, merged_scores = merge_rows(
        ids, scores, k, higher_is_better=higher_is_better(metric)
    )
    coverage = Coverage(
        len(ok), len(responses), tuple(sorted(r.shard_id for r in ok)), len(ok) < len(responses)
    )
    return SearchResult(merged_ids, merged_scores, ok[0].bundle_id, coverage, metric)
