"""The published openapi.json is valid, and schemathesis finds no 5xx against a real server."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from tests.support.server import run_server

pytestmark = [pytest.mark.model, pytest.mark.slow]

# Property-based requests from the schema: every route, random bodies, parameters and uploads.
CHECKS = "not_a_server_error"


def test_schemathesis_finds_no_server_errors(tmp_path: Path) -> None:
    with run_server(tmp_path, MAX_QUEUED_JOBS="4", SYNC_TIMEOUT_S="60") as server:
        schema = httpx.get(f"{server.url}/openapi.json").json()
        validate(schema)  # raises on any OpenAPI 3.x violation
        assert "/api/v1/jobs" in schema["paths"]
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
             "--checks", CHECKS, "--max-examples", "25", "--seed", "1", "--workers", "1",
             "--request-timeout", "60", "--phases", "examples,coverage,fuzzing,stateful",
             "--report", "junit", "--report-dir", str(tmp_path / "report")],
            capture_output=True, text=True, timeout=1200,
        )
        log = server.log.read_text()
    # On failure show schemathesis' ERRORS / FAILURES sections, not just its summary.
    report = run.stdout[run.stdout.find("=====") :] if "=====" in run.stdout else run.stdout
    assert run.returncode == 0, report[:12000] + run.stderr[-2000:]
    assert "Traceback" not in log, log[-4000:]
