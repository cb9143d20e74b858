"""Build one typical usage row and request audit entry N times: run under callgrind twice (N and 0) and divide
the difference of the instruction counts by N to get the cost of building a record, independent of the other
load on the machine.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benchmarks/count_record_build.py 20000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benchmarks/count_record_build.py 0
"""

from __future__ import annotations

import sys
import time

from sluicegate.metering.recorder import request_audit
from sluicegate.records import Attempt, RequestRecord
from sluicegate.storage.usage import usage_row
from sluicegate.types import Usage


def main() -> None:
    record = RequestRecord(
        request_id="req_0123456789abcdef01234567",
        key_id="k_0123456789",
        key_prefix="sk-sg-AbCdEfGh",
        group="eng",
        requested_model="gpt-4o-mini",
        model="gpt-4o-mini",
        deployment="openai/gpt-4o-mini",
        stream=True,
        started_at=time.time(),
        user="alice",
        status=200,
        outcome="completed",
        usage=Usage(11, 5),
        attempts=[Attempt("gpt-4o-mini", "openai/gpt-4o-mini", True, latency_ms=3.0)],
        metadata={"team": "search"},
    )
    for _ in range(int(sys.argv[1])):
        usage_row(record)
        request_audit(record)


if __name__ == "__main__":
    main()
