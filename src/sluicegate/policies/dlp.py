"""DLP in the request path: scan prompts before any upstream call, redact answers as they stream.

The default policy comes from the config file's ``dlp:`` section; a group may override either direction
(admin API / CLI), which the principal carries. Request side: ``block`` refuses with 403 ``dlp_blocked``
naming the detector types (never the matched text), ``redact`` rewrites the messages (strings, text parts,
tool-call arguments, tool results) before they are forwarded, ``log`` only records. Response side: every
choice's content and every tool call's argument fragments pass through their own ``StreamRedactor``, which
holds back at most the window the active detectors need; held text is released before the choice's finish
chunk, so the stream keeps SPEC §5's shape. Every action is recorded (type, direction, count) on the
request context for the audit log and metrics; matched text is never stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from ..dlp import Engine, StreamRedactor, redact_messages, redact_messages_async, scan_messages, scan_messages_async
from ..dlp.config import DirectionConfig, DlpConfig
from ..errors import DlpBlocked
from ..hooks import DlpEvent, Policy, StreamFilter
from ..types import ChatChunk, ChoiceDelta, Completion

if TYPE_CHECKING:
    from ..hooks import RequestContext

Direction = Literal["request", "response"]


class DlpEngines:
    """Compiled engines per (direction, policy), built once and shared; group overrides included."""

    def __init__(self, config: DlpConfig) -> None:
        self.config = config
        self._cache: dict[tuple[str, str], Engine | None] = {}

    def engine(self, direction: Direction, override: dict[str, Any] | None) -> Engine | None:
        spec = (override or {}).get(direction, ...)
        if spec is ...:
            key = (direction, "default")
            if key not in self._cache:
                self._cache[key] = self.config.engine(direction)
            return self._cache[key]
        if spec is None:  # the group turned this direction off
            return None
        key = (direction, repr(sorted(spec.items())))
        if key not in self._cache:
            cfg = self.config.model_copy(update={direction: DirectionConfig.model_validate(spec)})
            self._cache[key] = cfg.engine(direction)
        return self._cache[key]


def _record(ctx: RequestContext, direction: str, action: str, counts: dict[str, int]) -> None:
    for detector, count in sorted(counts.items()):
        ctx.dlp_events.append(DlpEvent(direction, action, detector, count))


class DlpPolicy(Policy):
    name = "dlp"

    def __init__(self, engines: DlpEngines) -> None:
        self._engines = engines

    async def before(self, ctx: RequestContext) -> None:
        engine = self._engines.engine("request", ctx.principal.group_dlp)
        if engine is None:
            return
        messages = ctx.request.messages
        if engine.action == "redact":
            redacted, findings = await redact_messages_async(messages, engine)
            if findings:
                ctx.request.messages = redacted
        else:
            findings = await scan_messages_async(messages, engine)
        if not findings:
            return
        counts: dict[str, int] = {}
        for f in findings:
            counts[f.type] = counts.get(f.type, 0) + 1
        _record(ctx, "request", engine.action, counts)
        if engine.action == "block":
            raise DlpBlocked(
                "The request was blocked by the data loss prevention policy: it contains "
                + ", ".join(sorted(counts))
                + "."
            )

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None:
        engine = self._engines.engine("response", ctx.principal.group_dlp)
        if engine is None:
            return None
        return ResponseRedactor(ctx, engine, self._engines.config.hold_back)

    def filter_completion(self, ctx: RequestContext, completion: Completion) -> Completion:
        engine = self._engines.engine("response", ctx.principal.group_dlp)
        if engine is None:
            return completion
        counts: dict[str, int] = {}
        choices = []
        for choice in completion.choices:
            message = choice.get("message")
            if not isinstance(message, dict):
                choices.append(choice)
                continue
            if engine.action == "redact":
                (new_message,), findings = redact_messages([message], engine)
                choice = {**choice, "message": new_message}
            else:
                findings = scan_messages([message], engine)
            for f in findings:
                counts[f.type] = counts.get(f.type, 0) + 1
            choices.append(choice)
        if counts:
            # block on the response side withholds nothing already generated: it redacts, and is recorded as such.
            _record(ctx, "response", engine.action, counts)
            completion = Completion(choices, completion.usage, completion.extra)
        return completion


class ResponseRedactor:
    """A ``StreamFilter``: one redactor per choice's content and per tool call's arguments."""

    def __init__(self, ctx: RequestContext, engine: Engine, hold_back: int) -> None:
        self._ctx = ctx
        self._engine = engine
        self._hold_back = hold_back
        self._redact = engine.action != "log"
        self._content: dict[int, StreamRedactor] = {}
        self._args: dict[tuple[int, int], StreamRedactor] = {}

    def _redactor(self, store: dict[Any, StreamRedactor], key: Any) -> StreamRedactor:
        r = store.get(key)
        if r is None:
            r = store[key] = StreamRedactor(self._engine, self._hold_back)
        return r

    def feed(self, batch: list[ChatChunk]) -> list[ChatChunk]:
        out: list[ChatChunk] = []
        for chunk in batch:
            choices = []
            for choice in chunk.choices:
                choices.extend(self._choice(choice))
            if choices or chunk.usage is not None:
                out.append(ChatChunk(choices, chunk.usage))
        return out

    def _choice(self, choice: ChoiceDelta) -> list[ChoiceDelta]:
        delta = dict(choice.delta)
        index = choice.index
        text = delta.get("content")
        if isinstance(text, str) and text:
            released = self._redactor(self._content, index).feed(text)
            delta["content"] = released if self._redact else text
            if not delta["content"]:
                del delta["content"]
        calls = delta.get("tool_calls")
        if calls:
            new_calls = []
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                args = fn.get("arguments") if isinstance(fn, dict) else None
                if isinstance(fn, dict) and isinstance(args, str) and args:
                    released = self._redactor(self._args, (index, call.get("index", 0))).feed(args)
                    call = {**call, "function": {**fn, "arguments": released if self._redact else args}}
                    if not released and "id" not in call:
                        continue  # a continuation fragment wholly held back
                new_calls.append(call)
            if new_calls:
                delta["tool_calls"] = new_calls
            else:
                del delta["tool_calls"]
        out = [ChoiceDelta(index, delta, None, choice.logprobs)] if delta or choice.finish_reason is None else []
        if choice.finish_reason is not None:
            out.extend(self._release(index))
            out.append(ChoiceDelta(index, {}, choice.finish_reason))
        return [c for c in out if c.delta or c.finish_reason is not None]

    def _release(self, index: int) -> list[ChoiceDelta]:
        """Everything held for one choice, before its finish chunk."""
        out = []
        content = self._content.pop(index, None)
        if content is not None:
            rest = content.flush()
            self._count(content)
            if rest and self._redact:
                out.append(ChoiceDelta(index, {"content": rest}))
        for key in sorted(k for k in self._args if k[0] == index):
            redactor = self._args.pop(key)
            rest = redactor.flush()
            self._count(redactor)
            if rest and self._redact:
                out.append(ChoiceDelta(index, {"tool_calls": [{"index": key[1], "function": {"arguments": rest}}]}))
        return out

    def _count(self, redactor: StreamRedactor) -> None:
        if redactor.counts:
            _record(self._ctx, "response", self._engine.action, redactor.counts)

    def flush(self) -> list[ChatChunk]:
        indexes = sorted({i for i in self._content} | {k[0] for k in self._args})
        choices = [c for i in indexes for c in self._release(i)]
        return [ChatChunk(choices)] if choices else []
