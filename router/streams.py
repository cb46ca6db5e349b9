"""The router's long-lived ``IndexShard.SearchStream`` to one shard replica
(``router.shard_transport: stream``).

One bidirectional stream per replica channel carries every search the router sends that
replica: a request message per shard call (its id, its timeout, the ShardSearchRequest) and
a reply per request, in any order. It saves what gRPC spends on each unary call (the call
object, an HTTP/2 stream with its headers and trailers, the server's per-call handler)
and keeps the unary call's contract, so the replica logic (balance, retry, hedge, eject)
sees no difference:

- **deadline**: the request's timeout travels in its message (the shard drops a search whose
  time has passed before it reaches the index) and a timer here fails the waiting search
  with DEADLINE_EXCEEDED when it runs out, as a unary call's own timeout would;
- **status**: a reply with a non-OK code raises the ``grpc.aio.AioRpcError`` the unary call
  would have raised (same code, same message); the stream goes on;
- **broken stream** (the replica restarted or went away, the connection dropped, the shard
  is shutting down): every search in flight on it fails UNAVAILABLE (retried on another
  replica, and the replica is ejected for a moment, as for a unary call to a dead process);
  the next search opens a new stream on the channel, which reconnects by itself;
- **cancel** (a hedge lost, every caller left): a cancel message withdraws the search, so
  a search still queued in the shard never reaches the index.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import grpc

from annfleet.v1 import shard_pb2

log = logging.getLogger(__name__)

METHOD = "/annfleet.v1.IndexShard/SearchStream"
_SEARCH_FIELD = 3  # ShardStreamRequest.search


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_request(request_id: int, timeout_s: float, search: bytes) -> bytes:
    """A ShardStreamRequest on the wire, around an already serialised ShardSearchRequest
    (protobuf messages concatenate: the head's fields and field 3 written after it)."""
    head = shard_pb2.ShardStreamRequest(request_id=request_id, timeout_s=timeout_s)
    tag = (_SEARCH_FIELD << 3) | 2  # length-delimited
    return head.SerializeToString() + bytes((tag,)) + _varint(len(search)) + search


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a unary Search call would raise with this status."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


_CODES = {c.value[0]: c for c in grpc.StatusCode}


class _Stream:
    """One open SearchStream call: searches in flight on it, its writer and its reader."""

    def __init__(self, call: Any, target: str) -> None:
        self.call = call
        self.target = target
        self.pending: dict[int, asyncio.Future[shard_pb2.ShardStreamReply]] = {}
        self.outbox: collections.deque[bytes] = collections.deque()
        self.broken = False
        self._wake: asyncio.Future[None] | None = None
        self.reader = asyncio.ensure_future(self._read())
        self.writer = asyncio.ensure_future(self._write())

    def send(self, data: bytes) -> None:
        """Queue a message for the writer (a call takes one write at a time)."""
        self.outbox.append(data)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self.outbox:
                    await self.call.write(self.outbox.popleft())
                self._wake = loop.create_future()
                await self._wake
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call has ended; the reader learns why
            log.debug("search stream to %s: write failed: %s", self.target, exc)
            self.outbox.clear()

    async def _read(self) -> None:
        reason = "the shard ended the stream"
        try:
            while True:
                reply = await self.call.read()
                if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
                    code = await self.call.code()
                    if code != grpc.StatusCode.OK:
                        reason = f"stream ended {code.name}: {await self.call.details()}"
                    break
                future = self.pending.pop(reply.request_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except asyncio.CancelledError:
            reason = "the router closed the stream"
            raise
        except grpc.aio.AioRpcError as exc:
            reason = f"stream broke: {exc.code().name}: {exc.details()}"
        except Exception as exc:  # the call ended under a read
            reason = f"stream broke: {type(exc).__name__}: {exc}"
        finally:
            self.fail(f"{reason} ({self.target})")

    def fail(self, reason: str) -> None:
        """Every search in flight fails UNAVAILABLE; the stream takes no more."""
        self.broken = True
        self.writer.cancel()
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(rpc_error(grpc.StatusCode.UNAVAILABLE, reason))

    def close(self) -> None:
        self.broken = True
        self.call.cancel()
        self.reader.cancel()
        self.writer.cancel()


class SearchStreams:
    """Searches to one replica over one long-lived stream, reopened when it breaks."""

    def __init__(self, channel: grpc.aio.Channel, target: str) -> None:
        self.target = target
        self._open = channel.stream_stream(
            METHOD,
            request_serializer=None,  # messages are encoded here (encode_request)
            response_deserializer=shard_pb2.ShardStreamReply.FromString,
        )
        self._stream: _Stream | None = None
        self._next_id = 0
        self.opened = 0  # streams opened (1 + reconnects)

    def _current(self) -> _Stream:
        stream = self._stream
        if stream is None or stream.broken:
            stream = self._stream = _Stream(self._open(None), self.target)
            self.opened += 1
        return stream

    async def search(
        self, request: shard_pb2.ShardSearchRequest, timeout: float
    ) -> shard_pb2.ShardSearchResponse:
        """As ``IndexShardStub.Search(request, timeout=timeout)``: the response, or the
        ``grpc.aio.AioRpcError`` that call would raise."""
        stream = self._current()
        loop = asyncio.get_running_loop()
        request_id = self._next_id = self._next_id + 1
        future: asyncio.Future[shard_pb2.ShardStreamReply] = loop.create_future()
        stream.pending[request_id] = future
        timer = loop.call_later(timeout, _expire, future, timeout)
        stream.send(encode_request(request_id, timeout, request.SerializeToString()))
        try:
            reply = await future
        except asyncio.CancelledError:
            if stream.pending.pop(request_id, None) is not None and not stream.broken:
                cancel = shard_pb2.ShardStreamRequest(request_id=request_id, cancel=True)
                stream.send(cancel.SerializeToString())
            raise
        except grpc.aio.AioRpcError:
            stream.pending.pop(request_id, None)
            raise
        finally:
            timer.cancel()
        if reply.code:
            raise rpc_error(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message)
        return reply.search

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            await asyncio.gather(self._stream.reader, self._stream.writer, return_exceptions=True)
            self._stream = None


def _expire(future: asyncio.Future[shard_pb2.ShardStreamReply], timeout: float) -> None:
    if not future.done():
        future.set_exception(
            rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"Deadline Exceeded ({timeout:.3f}s)")
        )
