"""Names of wire enums, derived from the proto so a new enum value needs no edit here."""

from __future__ import annotations

from annfleet.v1 import retrieval_pb2

# Source code -> its name as callers see it ("ann", "popular", ...), from enum Source.
SOURCE_NAMES: dict[int, str] = {
    value.number: value.name.removeprefix("SOURCE_").lower()
    for value in retrieval_pb2.DESCRIPTOR.enum_types_by_name["Source"].values
}


def source_name(code: int) -> str:
    """The name of a Source code; "unknown" for a code this build does not know."""
    return SOURCE_NAMES.get(int(code), "unknown")
