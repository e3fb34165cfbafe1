"""Load run: 20 concurrent short requests + 1 long job on a real server with 2 workers.

Prints the short requests' p50/p95 latency and whether they were answered while the long job
was still running (fairness). Uses the test clips, so it runs on a fresh checkout.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import DATA, speech  # noqa: E402
from tests.support.load import load_run, summary  # noqa: E402
from tests.support.server import run_server  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        long = speech(Path(tmp) / "long.wav", 8)
        with run_server(Path(tmp), AUDIO_LIMIT_SINGLE_CORE="15",
                        PARALLEL_CHUNK_DURATION="20") as server:
            result = load_run(server, DATA / "jfk.flac", long, count=20)
    print(summary(result))
    failed = [s for s in result.short_statuses if s != 200]
    if failed or result.job_status != "succeeded":
        raise SystemExit(f"load run failed: short statuses {failed}, job {result.job_status}")


if __name__ == "__main__":
    main()
