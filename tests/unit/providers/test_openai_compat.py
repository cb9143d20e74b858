"""The OpenAI-compatible adapter's error translation: the upstream's hints survive, in every form they come."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from sluicegate.errors import UpstreamStatus
from sluicegate.providers.openai_compat import translate_error

BODY = b'{"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}}'


def test_retry_after_in_seconds_milliseconds_and_as_an_http_date() -> None:
    assert translate_error(429, BODY, {"retry-after": "7"}).retry_after == 7  # type: ignore[attr-defined]
    assert translate_error(429, BODY, {"retry-after-ms": "250"}).retry_after == 0.25  # type: ignore[attr-defined]
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    err = translate_error(429, BODY, {"Retry-After": when})
    assert isinstance(err, UpstreamStatus) and err.retry_after is not None and 25 < err.retry_after <= 30
    assert err.headers["retry-after"] in {"28", "29", "30"}  # passed on to the client in seconds
