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


def mask_names(mask: int) -> list[str]:
    """The names of the sources whose bit (1 << code) is set in a source mask, by code."""
    return [name for code, name in sorted(SOURCE_NAMES.items()) if code and mask >> code & 1]


# EventType value -> name ("click", ...), from enum EventType; UNSPECIFIED is not an event.
EVENT_TYPE_NAMES: dict[int, str] = {
    value.number: value.name.removeprefix("EVENT_TYPE_").lower()
    for value in retrieval_pb2.DESCRIPTOR.enum_types_by_name["EventType"].values
    if value.number
}


def event_type_value(name: str) -> int:
    """ "click" -> EVENT_TYPE_CLICK's value; ValueError naming the known types otherwise."""
    for value, known in EVENT_TYPE_NAMES.items():
        if known == name.lower():
            return value
    raise ValueError(f"unknown event type {name!r} (known: {', '.join(EVENT_TYPE_NAMES.values())})")
