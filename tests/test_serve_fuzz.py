"""schemathesis over the served /openapi.json: generated requests for every operation (bounded), none
answered with a 5xx or with a status or body the schema does not declare."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from serve_fixtures import KEY, ServerThread, folder  # noqa: E402,F401 - fixtures are found by name

from qwen3lab import LLM  # noqa: E402
from qwen3lab.serve import ServerConfig, build_app  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server(folder):
    llm = LLM(str(folder), dtype="float32", max_model_len=512, kv_cache_memory_gb=0.05)
    # Short answers: the fuzzer asks for any max_tokens and n, and the point is the answer's shape.
    config = ServerConfig(served_model_names=["tiny"], api_key=KEY, max_tokens_limit=8, max_body_bytes=2**20)
    with ServerThread(build_app(llm, config)) as s:
        yield s


def test_no_server_errors_and_responses_match_the_schema(fuzz_server):
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    from schemathesis.checks import not_a_server_error

    # The request models are looser than the rules (an empty messages list is schema-valid and a 400), so
    # schemathesis' positive-data check is left out; every answer must still be declared and well-formed.
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    # Operations looped here rather than through schemathesis' pytest plugin, which this pytest breaks.
    api = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 8
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=checks, timeout=60)

        check()
