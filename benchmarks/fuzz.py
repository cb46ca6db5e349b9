"""`annfleet bench fuzz`: hostile requests against real servers, counted by status code.

Every unary RPC of every annfleet service gets generated payloads through a raw channel
(identity serializers, so the bytes reach the server exactly as generated):

- raw random bytes, truncated or bit-flipped valid requests, fields sent with the wrong
  wire type;
- structurally valid but hostile messages built from the request's protobuf descriptor
  (so an RPC added later is fuzzed with no change here): extreme integers (0, 2^32 - 1,
  negative int64), odd byte lengths, NaN / Inf / denormal float32 rows, wrong dims,
  batches past ``max_batch``, unknown bundle ids, odd unicode;
- a valid request with some fields replaced by hostile values (reaches deep validation).

Only the status codes the ``.proto`` comment of an RPC documents may come back (never
UNKNOWN or INTERNAL), every non-OK status carries a message, and health stays SERVING.
Requests go out in concurrent batches (hypothesis draws a batch per example).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from annfleet.arrays import GRPC_OPTIONS
from annfleet.v1 import retrieval_pb2, shard_pb2

FD = pb_descriptor.FieldDescriptor
PROTO_FILES = ("shard.proto", "retrieval.proto", "common.proto", "admin.proto")
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


# ---------------------------------------------------------------- the documented contract
def documented_codes(proto_text: str, package: str = "annfleet.v1") -> dict[str, set[str]]:
    """``/pkg.Service/Method`` -> status code names the .proto documents for it.

    The comment above an rpc lists its codes; the comment above its service lists codes that
    apply to every RPC of the service; "as IndexShard.Search" / "as for Search" in an rpc's
    comment brings in that RPC's codes.
    """
    known = {c.name for c in grpc.StatusCode}

    def codes(comment: list[str]) -> set[str]:
        return set(re.findall(r"\b[A-Z][A-Z_]+\b", " ".join(comment))) & known

    own: dict[str, set[str]] = {}
    refs: dict[str, list[str]] = {}
    service, service_codes = "", set()
    comment: list[str] = []
    for line in proto_text.splitlines():
        stripped = line.strip()
        if match := re.match(r"service\s+(\w+)", stripped):
            service, service_codes, comment = match.group(1), codes(comment), []
        elif stripped.startswith("//"):
            comment.append(stripped)
        elif match := re.match(r"rpc\s+(\w+)\s*\(", stripped):
            name = f"/{package}.{service}/{match.group(1)}"
            own[name] = codes(comment) | service_codes | {"OK"}
            text = " ".join(comment)
            refs[name] = [
                f"/{package}.{svc or service}/{rpc}"
                for svc, rpc in re.findall(r"\bas (?:for )?(?:(\w+)\.)?(\w+)", text)
            ]
            comment = []
        else:
            comment = []
    return {
        name: found.union(*(own[r] for r in refs[name] if r in own)) for name, found in own.items()
    }


def contract() -> dict[str, set[str]]:
    """Documented codes of every RPC in the committed protos."""
    root = resources.files("annfleet.v1")
    codes: dict[str, set[str]] = {}
    for name in PROTO_FILES:
        codes.update(documented_codes(root.joinpath(name).read_text()))
    return codes


# ---------------------------------------------------------------- hostile values
U32_EDGES = [0, 1, 2, 7, 8, 9, 31, 32, 33, 64, 500, 501, 1024, 4096, 4097, 1 << 20, 2**31 - 1]
U32_EDGES += [2**31, 2**32 - 1]
I64_EDGES = [0, 1, -1, 2**31, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63)]
FLOAT_EDGES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
    1e-45,
    3.4e38,
    -3.4e38,
    1e-40,
]
TEXT_EDGES = ["", "bogus", "0" * 64, "🦀", "\x00", "a" * 10_000, "../../etc/passwd"]


def _ints(lo: int, hi: int, edges: Sequence[int]) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([e for e in edges if lo <= e <= hi]), st.integers(lo, hi))


def float_rows(dims: Sequence[int], max_rows: int) -> st.SearchStrategy[bytes]:
    """float32 LE matrices: a few rows of edge values, or many rows of one fill."""

    def build(rows: int, dim: int, fill: float, poison: tuple[int, float] | None) -> bytes:
        matrix = np.full((rows, dim), fill, dtype="<f4")
        if poison is not None and matrix.size:
            matrix.reshape(-1)[poison[0] % matrix.size] = poison[1]
        return matrix.tobytes()

    return st.builds(
        build,
        st.one_of(st.integers(0, 4), st.sampled_from([max_rows, max_rows + 1, 2 * max_rows])),
        st.one_of(st.sampled_from(list(dims)), st.integers(0, 80)),
        st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(width=32)),
        st.none() | st.tuples(st.integers(0, 10_000), st.sampled_from(FLOAT_EDGES)),
    )


def odd_bytes() -> st.SearchStrategy[bytes]:
    """Random bytes, lengths that are not whole int64 / float32 values, or long repeats."""
    return st.one_of(
        st.binary(max_size=40),
        st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=3), _counts()),
    )


def int64_array() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(_ints(-(2**63), 2**63 - 1, I64_EDGES), max_size=8).map(
            lambda v: np.asarray(v, dtype="<i8").tobytes()
        ),
        _counts().map(lambda n: np.arange(n, dtype="<i8").tobytes()),
    )


def _counts() -> st.SearchStrategy[int]:
    """Lengths of long repeats: mostly modest, sometimes large (every byte costs time)."""
    return st.one_of(st.integers(1, 300), st.sampled_from([1023, 1024, 1025, 65_537, 200_000]))


@dataclass(frozen=True)
class Hints:
    """What the servers under test accept, so generated values straddle the limits."""

    dims: tuple[int, ...] = (32,)
    max_rows: int = 64
    bundle_ids: tuple[str, ...] = ()
    user_ids: tuple[int, ...] = ()
    item_ids: tuple[int, ...] = ()


def scalar(f: Any, hints: Hints) -> st.SearchStrategy[Any]:
    """Hostile values for one non-message field, by type (and by name for known arrays)."""
    t = f.type
    if t == FD.TYPE_BYTES:
        if f.name in ("queries", "vectors"):
            return st.one_of(float_rows(hints.dims, hints.max_rows), odd_bytes())
        if f.name.endswith("ids"):
            return st.one_of(int64_array(), odd_bytes())
        return odd_bytes()
    if t == FD.TYPE_STRING:
        pool = [*TEXT_EDGES, *hints.bundle_ids] if "bundle" in f.name else TEXT_EDGES
        return st.one_of(st.sampled_from(pool), st.text(max_size=20))
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        edges = [*U32_EDGES, *hints.dims] if f.name == "dim" else U32_EDGES
        return _ints(0, 2**32 - 1, edges)
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return _ints(0, 2**64 - 1, [0, 1, 2**63, 2**64 - 1])
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return _ints(-(2**31), 2**31 - 1, [0, 1, -1, 2**31 - 1, -(2**31)])
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        edges = [*I64_EDGES, *hints.user_ids] if "user" in f.name else I64_EDGES
        edges = [*edges, *hints.item_ids] if "item" in f.name else edges
        return _ints(-(2**63), 2**63 - 1, edges)
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(width=32))
    if t == FD.TYPE_ENUM:
        return _ints(-(2**31), 2**31 - 1, [v.number for v in f.enum_type.values])
    raise TypeError(f"no strategy for field {f.full_name} of type {t}")


def _is_map(f: Any) -> bool:
    return f.type == FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def _repeated(f: Any) -> bool:
    return bool(f.is_repeated)


def message_values(desc: Any, hints: Hints, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Field name -> hostile value for a subset of ``desc``'s fields (nested messages too)."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if _is_map(f):
            key = scalar(f.message_type.fields_by_name["key"], hints)
            value_field = f.message_type.fields_by_name["value"]
            if value_field.type == FD.TYPE_MESSAGE:
                continue
            fields[f.name] = st.dictionaries(key, scalar(value_field, hints), max_size=3)
            continue
        if f.type == FD.TYPE_MESSAGE:
            if depth >= 3:
                continue
            value: st.SearchStrategy[Any] = message_values(f.message_type, hints, depth + 1)
        else:
            value = scalar(f, hints)
        if _repeated(f):
            value = st.one_of(
                st.lists(value, max_size=5),
                st.builds(lambda v, n: [v] * n, value, _counts())
                if f.type != FD.TYPE_MESSAGE
                else st.lists(value, max_size=2),
            )
        fields[f.name] = value
    return st.fixed_dictionaries({}, optional=fields)


def _fill(msg: pb_message.Message, values: dict[str, Any]) -> pb_message.Message:
    for name, value in values.items():
        f = msg.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if _is_map(f):
            target.clear()
            target.update(value)
        elif f.type == FD.TYPE_MESSAGE and _repeated(f):
            del target[:]
            for item in value:
                _fill(target.add(), item)
        elif f.type == FD.TYPE_MESSAGE:
            msg.ClearField(name)
            _fill(target, value)
        elif _repeated(f):
            del target[:]
            target.extend(value)
        else:
            setattr(msg, name, value)
    return msg


def _wrong_wire_type(number: int, wire_type: int, payload: bytes) -> bytes:
    """One field with a tag whose wire type need not match the field's declared type."""
    tag = _varint((number << 3) | wire_type)
    body = {
        0: _varint(int.from_bytes(payload[:8].ljust(8, b"\0"), "little")),
        1: payload[:8].ljust(8, b"\0"),
        2: _varint(len(payload)) + payload,
        5: payload[:4].ljust(4, b"\0"),
    }[wire_type]
    return tag + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _corrupt(valid: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(valid[: cut % (len(valid) + 1)] if cut >= 0 else valid)
    for pos, bit in flips:
        if data:
            data[pos % len(data)] ^= 1 << (bit % 8)
    return bytes(data)


VARIANTS = 4  # requests sent per drawn payload (see ``variants``)


def variants(payload: bytes, seed: int) -> list[bytes]:
    """A drawn payload and cheap relatives of it: one byte changed, truncated, and with a
    random unknown field appended (still a valid message). Hypothesis draws are costly
    (~1 ms each); this spends one draw on ``VARIANTS`` requests, reproducibly from ``seed``.
    """
    rng = np.random.default_rng(seed)
    out = [payload]
    if payload:
        flipped = bytearray(payload)
        flipped[int(rng.integers(len(payload)))] = int(rng.integers(256))
        out.append(bytes(flipped))
        out.append(payload[: int(rng.integers(len(payload)))])
    else:
        out += [rng.bytes(int(rng.integers(1, 16))), b"\x00"]
    unknown = _varint((int(rng.integers(16, 2**29)) << 3) | 2) + _varint(3) + rng.bytes(3)
    out.append(payload + unknown)
    return out


def payloads(
    request_class: type[pb_message.Message], valid: pb_message.Message, hints: Hints
) -> st.SearchStrategy[bytes]:
    """Serialized hostile requests for one RPC (see the module docstring)."""
    desc = request_class.DESCRIPTOR
    numbers = [f.number for f in desc.fields] or [1]
    valid_bytes = valid.SerializeToString()

    def from_values(values: dict[str, Any]) -> bytes:
        return _fill(request_class(), values).SerializeToString()

    def mutated(values: dict[str, Any]) -> bytes:
        msg = request_class()
        msg.CopyFrom(valid)
        return _fill(msg, values).SerializeToString()

    return st.one_of(
        st.binary(max_size=64),
        st.builds(
            _corrupt,
            st.just(valid_bytes),
            st.integers(-1, len(valid_bytes)),
            st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=3),
        ),
        st.lists(
            st.builds(
                _wrong_wire_type,
                st.sampled_from(numbers) | st.integers(1, 2**29 - 1),
                st.sampled_from([0, 1, 2, 5]),
                st.binary(max_size=12),
            ),
            min_size=1,
            max_size=3,
        ).map(b"".join),
        message_values(desc, hints).map(from_values),
        message_values(desc, hints).map(mutated),
    )


# ---------------------------------------------------------------- running it
@dataclass
class Target:
    """One RPC on one server: where to send, what a valid request looks like."""

    method: str  # "/annfleet.v1.IndexShard/Search"
    address: str
    request_class: type[pb_message.Message]
    valid: pb_message.Message
    allowed: set[str] = field(default_factory=set)
    metadata: tuple[tuple[str, str], ...] = ()  # e.g. the admin port's bearer token


@dataclass
class FuzzResult:
    counts: dict[str, Counter[str]]  # method -> status code name -> requests
    undocumented: list[tuple[str, str, str]]  # (method, code, details) of each bad status
    empty_details: int
    not_serving: list[str]  # addresses whose health was not SERVING after a batch
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.undocumented and not self.empty_details and not self.not_serving


def request_class_of(method: str) -> type[pb_message.Message]:
    """The request message class of ``/pkg.Service/Method`` (from the registered protos)."""
    from google.protobuf import descriptor_pool

    service, name = method.strip("/").split("/")
    desc = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    return message_factory.GetMessageClass(desc.input_type)


def unary_methods(service_names: Sequence[str]) -> list[str]:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    out = []
    for service in service_names:
        for m in pool.FindServiceByName(service).methods:
            if not m.client_streaming and not m.server_streaming:
                out.append(f"/{service}/{m.name}")
    return out


class _Sender:
    """A grpc.aio channel on its own event loop thread: a batch of raw payloads goes out
    concurrently while the caller generates the next one (sync futures cost ~1 ms each)."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.channel = self._run(self._open(address, credentials)).result()

    async def _open(
        self, address: str, credentials: grpc.ChannelCredentials | None
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)
        return grpc.aio.secure_channel(address, credentials, options=GRPC_OPTIONS)

    def _run(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def send(
        self, target: Target, payloads: list[bytes], timeout: float
    ) -> concurrent.futures.Future[list[tuple[str, str]]]:
        """(code name, details) per payload, in order."""
        call = self.channel.unary_unary(target.method)

        async def one(payload: bytes) -> tuple[str, str]:
            try:
                await call(payload, timeout=timeout, metadata=target.metadata)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, exc.details() or ""
            return "OK", ""

        async def all_of() -> list[tuple[str, str]]:
            return list(await asyncio.gather(*(one(p) for p in payloads)))

        return self._run(all_of())

    def health(self, metadata: tuple[tuple[str, str], ...] = ()) -> int:
        async def check() -> int:
            stub = health_pb2_grpc.HealthStub(self.channel)
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=5, metadata=metadata
                )
            except grpc.aio.AioRpcError:
                return -1
            return int(reply.status)

        return int(self._run(check()).result())

    def close(self) -> None:
        self._run(self.channel.close()).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def fuzz(
    targets: Sequence[Target],
    *,
    per_method: int,
    batch: int = 100,
    hints: Hints | None = None,
    timeout: float = 10.0,
    seed: int | None = None,
    channel_credentials: grpc.ChannelCredentials | None = None,
) -> FuzzResult:
    """Send >= ``per_method`` generated requests to each target, in concurrent batches."""
    hints = hints or Hints()
    started = time.monotonic()
    result = FuzzResult({t.method: Counter() for t in targets}, [], 0, [], 0.0)
    for target in targets:
        sender = _Sender(target.address, channel_credentials)
        try:
            _fuzz_one(target, sender, result, per_method, batch, hints, timeout, seed)
        finally:
            sender.close()
    result.seconds = time.monotonic() - started
    return result


def _fuzz_one(
    target: Target,
    sender: _Sender,
    result: FuzzResult,
    per_method: int,
    batch: int,
    hints: Hints,
    timeout: float,
    seed: int | None,
) -> None:
    counts = result.counts[target.method]
    draws = max(1, batch // VARIANTS)
    drawn = st.tuples(payloads(target.request_class, target.valid, hints), st.integers(0, 2**32))
    in_flight: list[concurrent.futures.Future[list[tuple[str, str]]]] = []

    def check(batches: list[concurrent.futures.Future[list[tuple[str, str]]]]) -> None:
        for future in batches:
            for code, details in future.result():
                counts[code] += 1
                if code != "OK" and not details:
                    result.empty_details += 1
                if code not in target.allowed or grpc.StatusCode[code] in NEVER:
                    result.undocumented.append((target.method, code, details[:300]))
            if sender.health(target.metadata) != health_pb2.HealthCheckResponse.SERVING:
                result.not_serving.append(target.address)

    @settings(
        max_examples=math.ceil(per_method / (draws * VARIANTS)),
        deadline=None,
        database=None,
        derandomize=seed is not None,
        phases=[Phase.generate],  # counts stay exact; a failure is reported, not shrunk
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(drawn, min_size=draws, max_size=draws))
    def run_batch(batch_draws: list[tuple[bytes, int]]) -> None:
        # The previous batch is checked while this one is in flight.
        requests = [v for payload, seed in batch_draws for v in variants(payload, seed)]
        previous = in_flight[:]
        in_flight[:] = [sender.send(target, requests, timeout)]
        check(previous)

    run_batch()
    check(in_flight)


def format_counts(result: FuzzResult) -> str:
    codes = sorted({c for counter in result.counts.values() for c in counter})
    header = ["method", "requests", *codes]
    rows = [
        [m, str(sum(c.values())), *(str(c.get(code, 0)) for code in codes)]
        for m, c in result.counts.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])


# ---------------------------------------------------------------- the standard targets
FUZZ_YAML = """\
shards:
  max_k: 500
  max_batch: 64
  max_delta_items: 10000
  updates_dir: {work}/updates
router:
  max_k: 500
  max_batch: 64
admin:
  token_file: {work}/admin-token
"""
ADMIN_TOKEN = "fuzz-admin-token"


def cluster_targets(
    router: str,
    shard: str,
    shard_admin: str,
    bundle: Any,
    user_id: int,
    admin_token: str = ADMIN_TOKEN,
    router_admin: str = "",
) -> list[Target]:
    """Every unary RPC of Retrieval (router), IndexShard (a shard's serving port), ShardAdmin
    (its admin port, with the bearer token) and, when served, RouterAdmin (the router's admin
    port), each with a valid request to mutate."""
    codes = contract()
    dim, bundle_id = bundle.dim, bundle.id
    query = np.ones((1, dim), dtype="<f4").tobytes()
    own_ids = np.load(bundle.shard_dir(0) / "ids.npy")[:2].astype("<i8")
    search = shard_pb2.ShardSearchRequest(queries=query, dim=dim, k=10, bundle_id=bundle_id)
    valid: dict[str, pb_message.Message] = {
        "/annfleet.v1.Retrieval/Search": retrieval_pb2.SearchRequest(queries=query, dim=dim, k=10),
        "/annfleet.v1.Retrieval/Retrieve": retrieval_pb2.RetrieveRequest(user_id=user_id, k=10),
        "/annfleet.v1.Retrieval/RecordEngagement": retrieval_pb2.RecordEngagementRequest(
            events=[
                retrieval_pb2.EngagementEvent(
                    user_id=user_id, item_id=int(own_ids[0]), type=retrieval_pb2.EVENT_TYPE_CLICK
                )
            ]
        ),
        "/annfleet.v1.IndexShard/Search": search,
        "/annfleet.v1.ShardAdmin/ExactSearch": search,
        "/annfleet.v1.ShardAdmin/Prepare": shard_pb2.PrepareRequest(bundle=str(bundle.path)),
        "/annfleet.v1.ShardAdmin/Commit": shard_pb2.CommitRequest(bundle_id=bundle_id),
        "/annfleet.v1.ShardAdmin/Release": shard_pb2.ReleaseRequest(bundle_id=bundle_id),
        "/annfleet.v1.ShardAdmin/Upsert": shard_pb2.UpsertRequest(
            ids=own_ids.tobytes(), vectors=np.ones((2, dim), "<f4").tobytes(), dim=dim
        ),
        "/annfleet.v1.ShardAdmin/Delete": shard_pb2.DeleteRequest(
            ids=own_ids[:1].tobytes(), missing_ok=True
        ),
    }
    token = (("authorization", f"Bearer {admin_token}"),)
    services = [
        (router, "Retrieval", ()),
        (shard, "IndexShard", ()),
        (shard_admin, "ShardAdmin", token),
    ]
    if router_admin:
        services.append((router_admin, "RouterAdmin", token))
    targets = []
    for address, service, metadata in services:
        for method in unary_methods([f"annfleet.v1.{service}"]):
            cls = request_class_of(method)
            request = valid.get(method, cls())
            targets.append(Target(method, address, cls, request, codes[method], metadata))
    return targets


def per_method_counts(targets: Sequence[Target], per_service: int) -> dict[str, int]:
    """Split each service's request budget evenly over its RPCs."""
    by_service = Counter(t.method.rsplit("/", 1)[0] for t in targets)
    return {
        t.method: math.ceil(per_service / by_service[t.method.rsplit("/", 1)[0]]) for t in targets
    }


@contextlib.contextmanager
def fuzz_cluster(bundle: Any, work_dir: Path) -> Iterator[tuple[list[Target], Hints]]:
    """A local cluster (one process per shard + router, as `annfleet up` runs them) with
    small request limits, and the targets and hints to fuzz it with."""
    from annfleet.cluster import LocalCluster
    from annfleet.config import load_config

    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "admin-token").write_text(ADMIN_TOKEN + "\n")
    (work_dir / "admin-token").chmod(0o600)
    config_path = work_dir / "fuzz.yaml"
    config_path.write_text(FUZZ_YAML.format(work=work_dir.resolve()))
    config = load_config(config_path)
    users = bundle.users()
    user = int(users[0][0]) if users is not None else 1
    hints = Hints(
        dims=(bundle.dim,),
        max_rows=config.shards.max_batch,
        bundle_ids=(bundle.id,),
        user_ids=(user,),
        item_ids=tuple(int(i) for i in np.load(bundle.shard_dir(0) / "ids.npy")[:2]),
    )
    with LocalCluster(
        bundle.path, config, log_dir=work_dir / "logs", config_path=config_path
    ) as cluster:
        shard = cluster.shards[0]
        targets = cluster_targets(
            cluster.router_target,
            shard.target,
            shard.admin_target,
            bundle,
            user,
            router_admin=getattr(cluster, "router_admin_target", ""),
        )
        yield targets, hints


def run(
    targets: Sequence[Target], hints: Hints, *, per_service: int, batch: int = 100, **kw: Any
) -> FuzzResult:
    """``fuzz`` with each service's budget split over its RPCs; results merged."""
    counts = per_method_counts(targets, per_service)
    started = time.monotonic()
    total = FuzzResult({t.method: Counter() for t in targets}, [], 0, [], 0.0)
    for target in targets:
        one = fuzz([target], per_method=counts[target.method], batch=batch, hints=hints, **kw)
        total.counts[target.method] = one.counts[target.method]
        total.undocumented += one.undocumented
        total.empty_details += one.empty_details
        total.not_serving += one.not_serving
    total.seconds = time.monotonic() - started
    return total


def readme(head: dict[str, Any], args: argparse.Namespace, result: FuzzResult) -> str:
    m = head["machine"]
    return (
        f"# {head['name']}\n\n- command: `{head['command']}`\n"
        f"- git revision: `{head['git_revision']}`, date {head['date']}\n"
        f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']} "
        "(shared with other jobs)\n"
        f"- {args.per_service} generated requests per service (split over its RPCs), in "
        f"concurrent batches of {args.batch}, {result.seconds:.0f} s; servers: a local "
        "cluster (one process per shard + router, `max_k` 500, `max_batch` 64; ShardAdmin on "
        "its admin port and RouterAdmin on the router's, with the bearer token; update logs in "
        "a scratch dir) on a "
        "synthetic 20000 x 32 flat bundle with 3 shards\n\n"
        "Counts by status code. Only codes the RPC's `.proto` comment documents may appear "
        "(never UNKNOWN or INTERNAL), every non-OK status carries a message, and health "
        "stayed SERVING after every batch.\n\n"
        f"{format_counts(result)}\n\n"
        "What is generated: raw random bytes, truncated / bit-flipped valid requests, fields "
        "with the wrong wire type, hostile messages built from each request's descriptor "
        "(extreme integers, odd byte lengths, NaN / Inf rows, wrong dims, batches past "
        "max_batch, unknown bundle ids, odd unicode), valid requests with hostile fields, and "
        "for each drawn payload a one-byte change, a truncation and an unknown field appended "
        "(`benchmarks/fuzz.py`). The same generator runs in `tests/test_fuzz.py`.\n"
    )


def fuzz_bundle(data_dir: Path) -> Any:
    """The small synthetic bundle the fuzz runs against (built once, then reused)."""
    from annfleet.bundle import Bundle
    from annfleet.errors import AnnfleetError
    from annfleet.server.builder import build_bundle
    from annfleet.synthetic import make_catalogue

    root = data_dir / "fuzz-bundle"
    try:
        return Bundle.open(root)
    except (AnnfleetError, OSError):
        cat = make_catalogue(20_000, 32, clusters=64, users=300, seed=7)
        return build_bundle(
            root,
            cat.ids,
            cat.vectors,
            num_shards=3,
            index_type="flat",
            index_params={},
            user_ids=cat.user_ids,
            user_vectors=cat.user_vectors,
            tables={"popular_ids": cat.popular_ids},
            overwrite=True,
            progress=False,
        )


def cmd(args: argparse.Namespace) -> int:
    from annfleet.benchmarks import datasets, report

    data_dir = args.data_dir or datasets.default_data_dir()
    bundle = fuzz_bundle(data_dir)
    with fuzz_cluster(bundle, data_dir / "fuzz-run") as (targets, hints):
        result = run(targets, hints, per_service=args.per_service, batch=args.batch, seed=args.seed)
    print(format_counts(result))
    print(f"{result.seconds:.1f} s")
    for method, code, details in result.undocumented[:20]:
        print(f"UNDOCUMENTED {method} {code}: {details}")
    if result.empty_details:
        print(f"{result.empty_details} non-OK statuses without a message")
    if result.not_serving:
        print(f"health not SERVING after a batch: {sorted(set(result.not_serving))}")
    if args.name:
        out = report.result_dir(args.name, args.out)
        head = report.header(args.name)
        report.write_json(
            out / "results.json",
            {
                **head,
                "per_service": args.per_service,
                "batch": args.batch,
                "seconds": result.seconds,
                "counts": {m: dict(c) for m, c in result.counts.items()},
                "undocumented": result.undocumented,
            },
        )
        (out / "README.md").write_text(readme(head, args, result))
        print(f"results: {out}")
    return 0 if result.ok else 1
