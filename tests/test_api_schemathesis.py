"""Property-based run of the served OpenAPI document against the app on the shared fleet.

Every operation gets generated valid and invalid requests; any 5xx, undocumented status, or
response that breaks its schema fails. Bounded (few examples per operation) to stay well under a
minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from chatq.api.app import create_app
from chatq.tasks.settings import Settings

from .test_api import KEY_A, api_settings, signing

CONFIG = {
    "seed": 20261125,
    "headers": {"Authorization": f"Bearer {KEY_A}"},
    "generation": {"max-examples": 15},
    "checks": {
        # Agents are registered by the fleet at run time and size limits are settings: a request can be
        # schema-valid yet refused with 422, a documented answer.
        "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "404", "409", "422", "429"]},
    },
}


# JSONL batches are sent as the generated text, as is.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")

API = api_settings(max_active_jobs=200)
# Loaded at import, as schemathesis's lazy fixture loader does not run on pytest 9; the app is
# pointed at the fleet (its services swapped in) once the fleet exists.
app = create_app(API, Settings(namespace="unused-until-the-fleet-is-up"))
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG))


@pytest.fixture(scope="module", autouse=True)
def _on_the_fleet(fleet) -> None:
    app.state.services = create_app(API, signing(fleet.settings)).state.services


@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate()
