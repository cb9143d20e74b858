"""Run the real gateway as a separate process on a free port, the way users run it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

MASTER_KEY = "sk-test-master-4f9c2a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """``sluicegate serve`` with a given config; ``url`` is the origin, ``base_url`` what SDKs take."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        env: dict[str, str] | None = None,
        *,
        log_format: str | None = None,
        workers: int = 1,
        extra_args: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.args = [*(["--log-format", log_format] if log_format else []), "--workers", str(workers)]
        self.args.extend(extra_args or [])
        self.config_path = workdir / "sluicegate.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.key = MASTER_KEY
        self.log_path = workdir / "gateway.log"
        self.env = {
            **os.environ,
            "SLUICEGATE_MASTER_KEY": MASTER_KEY,
            "SLUICEGATE_DATA_DIR": str(workdir / "data"),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "sluicegate", "serve", "--config", str(self.config_path), "--port", str(self.port)]
        cmd.extend(self.args)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request_line(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the JSON request log line of ``request_id`` and return it.

        The gateway writes that line once it is done with the request, after its last upstream attempt: a test
        that must show something did NOT happen later in a request waits for this instead of sleeping.
        """
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if line.startswith("{") and request_id in line:
                    entry: dict[str, Any] = json.loads(line)
                    if entry.get("logger") == "sluicegate.request" and entry.get("request_id") == request_id:
                        return entry
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no request log line for {request_id} within {timeout} s:\n{self.log()[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
