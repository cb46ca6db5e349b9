"""RouterAdmin: the router's control plane (rollout, rollback, status, blocked items) on its
admin port.

Served behind the bearer-token interceptor (``annfleet.auth``); a thin edge over
``rollout.RolloutController`` and the state store's blocked set: protobuf in and out,
exceptions -> status codes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from annfleet.arrays import I64, to_bytes
from annfleet.errors import InvalidArgument, Unavailable, status_of
from annfleet.metrics import REQUESTS
from annfleet.router.rollout import RolloutController
from annfleet.router.state import StateStore
from annfleet.serving import rpc
from annfleet.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

MAX_BLOCK_IDS = 100_000  # ids in one Block call


class RouterAdminService(admin_pb2_grpc.RouterAdminServicer):
    def __init__(self, controller: RolloutController, state: StateStore) -> None:
        self.controller = controller
        self.state = state

    async def Rollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.RolloutProgress]:
        code = grpc.StatusCode.OK
        try:
            async for progress in self.controller.rollout(request):
                yield progress
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("RouterAdmin.Rollout failed")
            await context.abort(code, message)
        finally:
            REQUESTS.labels("RouterAdmin", "Rollout", code.name).inc()

    @rpc("RouterAdmin")
    async def Rollback(
        self, request: admin_pb2.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RolloutStatus:
        return await self.controller.rollback()

    @rpc("RouterAdmin")
    async def Promote(
        self, request: admin_pb2.PromoteRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RolloutStatus:
        return await self.controller.promote(request)

    @rpc("RouterAdmin")
    async def Abort(
        self, request: admin_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RolloutStatus:
        return await self.controller.abort()

    @rpc("RouterAdmin")
    async def Status(
        self, request: admin_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RolloutStatus:
        reply = await self.controller.status(describe=not request.skip_replicas)
        try:
            blocked = await self.state.blocked()
        except Unavailable:
            blocked = self.state.last_blocked()
        reply.blocked_items = len(blocked.ids)
        return reply

    @rpc("RouterAdmin")
    async def Block(
        self, request: admin_pb2.BlockRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.BlockResponse:
        """Block (or unblock) items from Retrieve in the state store; the blocked set's size
        after. Unavailable (state store down) passes through as UNAVAILABLE."""
        ids = list(request.item_ids)
        if not ids or len(ids) > MAX_BLOCK_IDS:
            raise InvalidArgument(f"item_ids: 1 to {MAX_BLOCK_IDS} ids expected, got {len(ids)}")
        if min(ids) < 0:
            raise InvalidArgument(f"item_ids: ids must be >= 0, got {min(ids)}")
        await self.state.set_blocked(ids, blocked=not request.unblock)
        return admin_pb2.BlockResponse(blocked=len((await self.state.blocked()).ids))

    @rpc("RouterAdmin")
    async def Blocked(
        self, request: admin_pb2.BlockedRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.BlockedItems:
        """How many items are blocked and the smallest ``limit`` of them (0: all)."""
        ids = (await self.state.blocked()).ids
        shown = ids[: request.limit] if request.limit else ids
        return admin_pb2.BlockedItems(count=len(ids), item_ids=to_bytes(shown, I64))
