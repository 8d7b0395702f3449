"""scripts/serve_soak.py, briefly: slow bodies and heads, idle connections, near-complete
bodies and oversized prompts beside streaming clients leave /health answering, the streams
progressing and the server's memory bounded (generous bounds: a shared machine)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "serve_soak.py"


@pytest.mark.slow
@pytest.mark.e2e
def test_hostile_clients_neither_stall_the_server_nor_grow_its_memory():
    run = subprocess.run([sys.executable, str(SCRIPT), "--duration", "20", "--report", "5",
                          "--slow-bodies", "30", "--slow-heads", "30", "--idle", "30",
                          "--near-complete", "20", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    outcomes = summary["outcomes"]
    assert summary["health_failed"] == 0 and summary["health_max_ms"] < 2000, summary
    assert summary["stream_chunks"] > 500 and summary["stream_longest_gap_s"] < 5, summary
    assert summary["rss_max_mb"] - summary["rss_first_mb"] < 500, summary
    assert [k for k in outcomes if k.startswith("stream")] == ["stream 200"], outcomes
    assert outcomes["slow body: 408"] >= 30 and outcomes["slow head: closed"] >= 30
    assert outcomes["idle: closed"] >= 30 and outcomes["near-complete body: 503"] > 0
    assert not [k for k in outcomes if k.endswith(" 500")], outcomes
