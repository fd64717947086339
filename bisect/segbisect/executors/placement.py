"""Where a cluster executor ran a hybrid: the node and host, the seconds its phases took, and which hybrid and node
computed each stage it restored.

An attempt carries its placement as the plain record `to_record` writes (`Attempt.placement`, which the journal
keeps; empty for a hybrid run on this machine); the reports read it back with `Placement.of`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# A cluster hybrid's phases, in order: fetching from the shared DVC remote, running, pushing back to it.
PHASES = ("fetch", "run", "push")


@dataclass(frozen=True, kw_only=True)
class Placement:
    """`node`: the cluster's id of the node (Ray's: 56 hex digits); `seconds`: by phase (see PHASES);
    `restored_from`: per restored stage, the hybrid and node that computed it, None where nobody has said yet (the
    worker cannot know: the driver, which saw every hybrid, fills it in for the last attempt).
    """

    node: str
    host: str
    seconds: dict[str, float] = field(default_factory=dict)
    restored_from: dict[str, str] | None = None

    @property
    def node_name(self) -> str:
        """Ray's node ids are 56 hex digits; the first 8 tell the nodes of one cluster apart."""
        return self.node[:8]

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"node": self.node, "host": self.host, "seconds": dict(self.seconds)}
        if self.restored_from is not None:
            record["restored_from"] = dict(self.restored_from)
        return record

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Placement | None:
        """From an attempt's record; None where the attempt ran on this machine (an empty record). A field the
        record lacks reads as unknown rather than failing a report.
        """
        if not record:
            return None
        restored = record.get("restored_from")
        return cls(
            node=str(record.get("node", "-")),
            host=str(record.get("host", "")),
            seconds=dict(record.get("seconds") or {}),
            restored_from=dict(restored) if restored is not None else None,
        )
