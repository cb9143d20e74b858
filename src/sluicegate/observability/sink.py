"""The shape shared by the observability sinks: a hook that only reads finished records."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..hooks import RequestContext
    from ..records import RequestRecord


class RecordSink(abc.ABC):
    """A ``hooks.Sink``; ``observe`` also takes records that never met the chain.

    Requests refused at the edge (bad key, bad body, unknown model) end before a policy runs; the HTTP
    layer builds a record for them and hands it to ``observe`` directly, so metrics and logs see them too.
    """

    @abc.abstractmethod
    def observe(self, record: RequestRecord) -> None: ...

    name = "sink"

    async def finished(self, ctx: RequestContext, record: RequestRecord) -> None:
        self.observe(record)
