"""Schemathesis against the service's own OpenAPI document, over loopback (SQLite): for
generated requests, valid and invalid, no 5xx, and every response (status code, media type,
headers, body) as the document says.

Excluded checks: ``positive_data_acceptance`` — the schema gives types, the library checks
meaning (a size the model cannot take, an unknown provider), so schema-valid requests can
rightly be refused with a 422 problem; ``negative_data_rejection`` — every request carries a
valid key (replacing the Authorization header negative cases generate), and a repeated
scalar query parameter is taken last-wins, as Starlette does. Negative cases still must get
no 5xx and only documented responses.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from http_service import TenantKeys, provision, running
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from imagegen.bootstrap.settings import Settings
from imagegen.interfaces.http import ServiceSettings, create_app


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TenantKeys, Any]]:
    data: Path = tmp_path_factory.mktemp("schemathesis")
    settings = Settings(data_dir=data, starting_credits=1_000_000, provider_max_attempts=1)
    tenant = provision(settings, "fuzz")
    app = create_app(settings, service=ServiceSettings(max_body_bytes=64 * 1024))
    with running(app) as url:
        yield url, tenant, app


def test_the_service_keeps_to_its_openapi_document(live: tuple[str, TenantKeys, Any]) -> None:
    url, tenant, app = live
    schema = schemathesis.openapi.from_dict(app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13
    paths = {(operation.method.upper(), operation.path) for operation in operations}
    assert {("POST", "/v1/keys"), ("POST", "/v1/keys/{key_id}/revoke")} <= paths

    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(mode))
        @hypothesis_settings(
            max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def keeps_to_it(case: Any) -> None:
            case.call_and_validate(
                base_url=url,
                headers=tenant.auth("admin"),
                excluded_checks=[positive_data_acceptance, negative_data_rejection],
                timeout=30,
            )

        keeps_to_it()
