"""The OpenAPI schema describes what the rollouts routes really answer an operator (the fuzzing
in tests/api/test_schema.py holds a client's key, so it only ever sees their 403)."""

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections

from face_detect_api.wsgi import application

from .conftest import CANDIDATE

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
pytestmark = [pytest.mark.django_db]


@pytest.fixture
def wsgi_db():
    # Calling the WSGI app directly would close the test's database connection after each
    # request (as Django does between real requests); see tests/api/test_schema.py.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def call(operator_key, method: str, path: str, *, rollout_id=None, body=None, expected: int):
    operation = schema[path][method]
    kwargs = {"path_parameters": {"rollout_id": rollout_id}} if rollout_id else {}
    if body is not None:
        kwargs.update(body=body, media_type="application/json")
    case = operation.Case(headers={"X-API-Key": operator_key}, **kwargs)
    response = case.call()
    assert response.status_code == expected, response.text
    # Raises when the body or the status code is not what the schema documents.
    case.validate_response(response)
    return response.json()


def test_the_schema_lists_every_rollouts_route_with_403():
    """Eight operations under /api/v1/rollouts/, each documenting 401 and 403."""
    paths = {path: ops for path, ops in schema.raw_schema["paths"].items() if path.startswith("/api/v1/rollouts/")}
    operations = [(path, method) for path, ops in paths.items() for method in ops if method in ("get", "post")]
    assert len(operations) == 9  # list, start, detail and six transitions
    for path, method in operations:
        assert {"401", "403"} <= set(paths[path][method]["responses"]), (path, method)


def test_responses_to_an_operator_match_the_schema(wsgi_db, operator_key):
    """Start, read, list, pause, resume, advance, promote and the refusals all match their documented shapes."""
    plan = {"candidate": CANDIDATE, "mode": "canary", "stages": [{"weight": 5}, {"weight": 50}], "shadow_sample": 0.5}
    started = call(operator_key, "POST", "/api/v1/rollouts/", body=plan, expected=201)
    rollout_id = started["id"]
    call(operator_key, "POST", "/api/v1/rollouts/", body={"candidate": CANDIDATE, "mode": "ab"}, expected=409)
    call(
        operator_key, "POST", "/api/v1/rollouts/", body={"candidate": CANDIDATE, "mode": "canary", "guardrails": {"nope": 1}}, expected=400
    )
    call(operator_key, "GET", "/api/v1/rollouts/{rollout_id}/", rollout_id=rollout_id, expected=200)
    page = call(operator_key, "GET", "/api/v1/rollouts/", expected=200)
    assert page["results"][0]["id"] == rollout_id
    for action in ("pause", "resume", "advance"):
        call(
            operator_key, "POST", f"/api/v1/rollouts/{{rollout_id}}/{action}/", rollout_id=rollout_id, body={"reason": action}, expected=200
        )
    call(operator_key, "POST", "/api/v1/rollouts/{rollout_id}/resume/", rollout_id=rollout_id, body={}, expected=409)
    promoted = call(operator_key, "POST", "/api/v1/rollouts/{rollout_id}/promote/", rollout_id=rollout_id, expected=200)
    assert promoted["status"] == "promoted"
    call(operator_key, "GET", "/api/v1/rollouts/{rollout_id}/", rollout_id="f" * 8, expected=404)
