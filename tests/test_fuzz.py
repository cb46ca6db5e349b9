"""Hostile requests to every RPC of real servers: only documented status codes come back.

Each service gets >= ``FUZZ_PER_SERVICE`` generated requests (raw bytes and structurally
valid but hostile messages, ``annfleet.benchmarks.fuzz``) through a local cluster of real
processes; every answer must be a code the RPC's ``.proto`` comment lists (never UNKNOWN or
INTERNAL), with a message, and every process stays SERVING. ``annfleet bench fuzz`` runs
the same generator and records the counts.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from annfleet.benchmarks.fuzz import documented_codes, format_counts, fuzz_cluster, run
from annfleet.bundle import Bundle
from annfleet.cluster import health_status

PER_SERVICE = int(os.environ.get("FUZZ_PER_SERVICE") or 10_000)


def test_documented_codes_are_read_from_the_rpc_comments() -> None:
    text = """
// Every RPC: INTERNAL when it breaks.
service Thing {
  // Does it.
  // Status codes:
  //   OK
  //   INVALID_ARGUMENT    bad.
  //   UNAVAILABLE         later (see NOT_A_CODE).
  rpc Do(A) returns (B);

  rpc Other(A) returns (B);

  // Status codes: as Do, and NOT_FOUND.
  rpc Same(A) returns (B);
}

service Bare {
  // Status codes: OK; CANCELLED as Thing.Do.
  rpc One(A) returns (B);
}
"""
    assert documented_codes(text) == {
        "/annfleet.v1.Thing/Do": {"OK", "INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL"},
        "/annfleet.v1.Thing/Other": {"OK", "INTERNAL"},
        "/annfleet.v1.Thing/Same": {
            "OK",
            "INVALID_ARGUMENT",
            "UNAVAILABLE",
            "INTERNAL",
            "NOT_FOUND",
        },
        "/annfleet.v1.Bare/One": {"OK", "CANCELLED", "INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL"},
    }


@pytest.mark.slow
def test_fuzz_every_rpc_only_documented_codes_and_health_stays_serving(
    flat_bundle: Bundle, tmp_path: Path
) -> None:
    with fuzz_cluster(flat_bundle, tmp_path) as (targets, hints):
        assert {t.method for t in targets} >= {
            "/annfleet.v1.Retrieval/Search",
            "/annfleet.v1.Retrieval/Retrieve",
            "/annfleet.v1.Retrieval/RecordEngagement",
            "/annfleet.v1.IndexShard/Search",
            "/annfleet.v1.IndexShard/Info",
            "/annfleet.v1.ShardAdmin/Prepare",
            "/annfleet.v1.ShardAdmin/Upsert",
            "/annfleet.v1.ShardAdmin/Describe",
            "/annfleet.v1.RouterAdmin/Status",
        }
        result = run(targets, hints, per_service=PER_SERVICE, batch=100)
        print(format_counts(result), f"{result.seconds:.1f} s")
        assert not result.undocumented, result.undocumented[:5]
        assert result.empty_details == 0
        assert not result.not_serving
        for address in {t.address for t in targets}:
            assert health_status(address) == "SERVING"
    requests: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    for target in targets:
        counts = result.counts[target.method]
        service = target.method.rsplit("/", 1)[0]
        requests[service] += sum(counts.values())
        answered[service] += counts["OK"]
        assert counts["INVALID_ARGUMENT"] > 0  # the generator reaches validation ...
    assert all(answered[s] > 0 for s in requests), answered  # ... and gets past it
    assert all(n >= PER_SERVICE for n in requests.values()), requests
