"""The shape shared by the observability sinks: a policy that only reads finished records."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from ..policies.base import Policy

if TYPE_CHECKING:
    from ..records import RequestRecord
    from ..service import RequestContext


class RecordSink(Policy, abc.ABC):
    """A policy whose only hook is ``after``; ``observe`` also takes records that never met the chain.

    Requests refused at the edge (bad key, bad body, unknown model) end before a policy runs; the HTTP
    layer builds a record for them and hands it to ``observe`` directly, so metrics and logs see them too.
    """

    @abc.abstractmethod
    def observe(self, record: RequestRecord) -> None: ...

    async def after(self, ctx: RequestContext, record: RequestRecord) -> None:
        self.observe(record)
