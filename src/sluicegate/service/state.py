"""The answer so far, as the service knows it: what every retry, continuation, record and encoder relies on.

``StreamState`` takes the adapter's canonical chunks and gives back normalised choice deltas, whatever the
upstream did: each choice opens with one empty delta (an encoder's cue for its opening frame); ``role`` and
empty content are gone; tool calls come one per delta, with dense indexes from 0 per choice and
``id``/``type``/``function.name`` only in a call's opening delta, then ``arguments`` fragments only; a
finish is its own empty delta, ``tool_calls`` whenever calls were made (PROTOCOL §1.2 rule 15), and
nothing of a choice follows it. It keeps the facts the service decides with: whether the stream started
and completed, the last usage report, and the text delivered (for estimates and continuations).

An encoder for any wire format can rely on these rules and only turn deltas into bytes. Deltas that need
no change are passed on as the same objects: the common content chunk costs no allocation here.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..types import ChatChunk, ChoiceDelta, Usage


class _Choice:
    __slots__ = ("finished", "tool_ids", "tool_map")

    def __init__(self) -> None:
        self.finished = False
        self.tool_map: dict[int, int] = {}  # upstream tool-call index -> our dense index
        self.tool_ids: list[str] = []


class StreamState:
    __slots__ = ("_choices", "text_parts", "usage")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self.usage: Usage | None = None
        # Text delivered to the client: meters a stream without upstream usage, seeds a continuation.
        self.text_parts: list[str] = []

    @property
    def started(self) -> bool:
        return bool(self._choices)

    @property
    def has_tool_calls(self) -> bool:
        return any(c.tool_ids for c in self._choices.values())

    @property
    def complete(self) -> bool:
        """Every choice that started has its finish."""
        return bool(self._choices) and all(c.finished for c in self._choices.values())

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def feed(self, batch: list[ChatChunk]) -> list[ChoiceDelta]:
        out: list[ChoiceDelta] = []
        for chunk in batch:
            if chunk.usage is not None:
                self.usage = chunk.usage  # cumulative: the last report wins
            for choice in chunk.choices:
                self._choice(choice, out)
        return out

    def _choice(self, choice: ChoiceDelta, out: list[ChoiceDelta]) -> None:
        index = choice.index
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _Choice()
            out.append(ChoiceDelta(index, {}))
        elif state.finished:
            return  # an upstream that goes on after its finish: drop, the client has its answer
        delta = choice.delta
        finish = choice.finish_reason
        if delta:
            if "role" in delta or ("content" in delta and not delta["content"]):
                # role belongs to the opening only; empty or null content carries nothing
                delta = {k: v for k, v in delta.items() if k != "role" and not (k == "content" and not v)}
            calls = delta.get("tool_calls")
            if calls:
                rest = {k: v for k, v in delta.items() if k != "tool_calls"}
                if rest:
                    self._delta(ChoiceDelta(index, rest, None, choice.logprobs), out)
                for call in calls:
                    if isinstance(call, dict):
                        self._tool_call(index, state, call, out)
            elif delta:
                if delta is choice.delta and finish is None:
                    self._delta(choice, out)
                else:
                    self._delta(ChoiceDelta(index, delta, None, choice.logprobs), out)
        if finish is not None:
            if state.tool_ids and finish == "stop":
                finish = "tool_calls"  # some upstreams report stop for tool calls
            out.append(ChoiceDelta(index, {}, finish))
            state.finished = True

    def _delta(self, choice: ChoiceDelta, out: list[ChoiceDelta]) -> None:
        content = choice.delta.get("content")
        if isinstance(content, str):
            self.text_parts.append(content)
        out.append(choice)

    def _tool_call(self, index: int, state: _Choice, call: dict[str, Any], out: list[ChoiceDelta]) -> None:
        upstream_index = call.get("index")
        if not isinstance(upstream_index, int):
            upstream_index = len(state.tool_map)
        raw_fn = call.get("function")
        fn: dict[str, Any] = raw_fn if isinstance(raw_fn, dict) else {}
        raw_args = fn.get("arguments")
        arguments: str = raw_args if isinstance(raw_args, str) else ""
        ours = state.tool_map.get(upstream_index)
        if ours is None:
            ours = state.tool_map[upstream_index] = len(state.tool_ids)
            raw_id = call.get("id")
            call_id: str = raw_id if isinstance(raw_id, str) and raw_id else _call_id()
            state.tool_ids.append(call_id)
            raw_name = fn.get("name")
            name: str = raw_name if isinstance(raw_name, str) else ""
            opening = {
                "index": ours,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            self.text_parts.append(name)
            self.text_parts.append(arguments)
            out.append(ChoiceDelta(index, {"tool_calls": [opening]}))
        elif arguments:
            self.text_parts.append(arguments)
            out.append(ChoiceDelta(index, {"tool_calls": [{"index": ours, "function": {"arguments": arguments}}]}))


def _call_id() -> str:
    return "call_" + secrets.token_urlsafe(18)
