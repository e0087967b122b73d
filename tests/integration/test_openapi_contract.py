"""The OpenAPI document is true to behaviour: Schemathesis (pinned in the dev extra) generates
requests from it against a real uvicorn server with a real Redis and SavedModel, and every
check passes: no undocumented status, no schema-valid request refused without a documented
reason (tests/integration/schemathesis.toml says which), no response off its schema, no 500.

The budget is bounded (`generation.max-examples` in the config, deterministic generation), so
the run takes seconds and repeats exactly.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_inference_support import metric, start_api, url
from tests.servers import Server, running

pytestmark = pytest.mark.integration
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def api(tiny_model_repo: Path, redis_server: Server,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("contract")
    server = start_api(tiny_model_repo, workdir, f"redis://127.0.0.1:{redis_server.port}/4",
                       stage_poll_seconds=0)
    with running(server):
        yield server


def test_schemathesis_finds_no_contract_failure_and_no_500(api, tmp_path):
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [str(schemathesis), "--config-file", str(CONFIG), "run", url(api, "/openapi.json"),
         "--checks", "all", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout, report
    assert metric(api, "maskfleet_http_requests_total", status="500") == 0
