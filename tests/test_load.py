"""20 concurrent short requests and one long job on 2 real workers: all succeed, none starve."""

import logging
from pathlib import Path

import pytest

from tests.conftest import JFK_TEXT, heard
from tests.support.load import load_run, summary
from tests.support.server import run_server

pytestmark = [pytest.mark.model, pytest.mark.slow]

log = logging.getLogger(__name__)


def test_short_requests_overtake_a_long_job(
    tmp_path: Path, jfk: Path, several_minutes: Path
) -> None:
    # jfk (11 s) runs as one chunk; the ~200 s file fans out in 20 s chunks.
    with run_server(tmp_path, AUDIO_LIMIT_SINGLE_CORE="15", PARALLEL_CHUNK_DURATION="20") as server:
        result = load_run(server, jfk, several_minutes, count=20)
        assert server.temp_is_empty()
    log.warning("load run: %s", summary(result))
    assert result.short_statuses == [200] * 20
    assert all(heard(JFK_TEXT, text) == 1 for text in result.short_texts)
    # Round-robin across requests: the shorts are answered while the long job is still going.
    assert result.job_running_after_shorts
    assert result.job_status == "succeeded" and heard(JFK_TEXT, result.job_text) == 8
