"""What ranking services import: sync and async clients, results, typed errors.

from annfleet.client import Client
with Client("127.0.0.1:50051", timeout=0.05) as client:
    result = client.retrieve(user_id=1, k=500)
    result.ids, result.scores, result.sources_per_candidate, result.dropped_sources
    client.record_engagement([(1, 42, "click")])
"""

from annfleet.client.aio import AsyncClient, AsyncScatterClient
from annfleet.client.channels import tls_credentials
from annfleet.client.errors import (
    AnnfleetError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Throttled,
    Unavailable,
)
from annfleet.client.results import Coverage, Engagement, RetrieveResult, SearchResult
from annfleet.client.sync import Client, ScatterClient
from annfleet.client.throttle import ThrottleConfig, ThrottleStats

__all__ = [
    "AnnfleetError",
    "AsyncClient",
    "AsyncScatterClient",
    "Client",
    "Coverage",
    "DeadlineExceeded",
    "Engagement",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "RetrieveResult",
    "ScatterClient",
    "SearchResult",
    "ThrottleConfig",
    "ThrottleStats",
    "Throttled",
    "Unavailable",
    "tls_credentials",
]
