"""Retiring a version that a live rollout routes jobs to (its candidate or its baseline) is refused
with a message naming the rollout, in the registry's service, so the shell command and the admin
refuse it too; once the rollout is over the version retires as any other."""

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from registry.models import DetectorVersion
from registry.services import RegistryError, detector_version_activate, detector_version_retire
from rollouts import services

from .conftest import BASELINE, CANDIDATE

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def live():
    return services.rollout_start(candidate=CANDIDATE, mode="canary", actor="shell", stages=[{"weight": 5}, {"weight": 50}])


def retired(version_id: str) -> bool:
    return DetectorVersion.objects.get(id=version_id).retired_at is not None


@pytest.mark.parametrize("status", ["running", "paused"])
def test_the_service_refuses_to_retire_a_live_rollouts_candidate(live, status):
    """RegistryError naming the rollout, its mode and the version's role; the version stays usable."""
    if status == "paused":
        services.rollout_pause(rollout_id=live.id, actor="shell")
    with pytest.raises(RegistryError) as refused:
        detector_version_retire(version_id=CANDIDATE)
    message = str(refused.value)
    assert str(live.id) in message and "candidate" in message and "canary" in message and status in message
    assert not retired(CANDIDATE)


def test_the_service_refuses_to_retire_a_live_rollouts_baseline(live):
    """The baseline made inactive by hand during the rollout is still the rollout's: refused too."""
    detector_version_activate(version_id="mtcnn@1.1.0")  # the baseline is no longer the active one
    with pytest.raises(RegistryError) as refused:
        detector_version_retire(version_id=BASELINE)
    assert str(live.id) in str(refused.value) and "baseline" in str(refused.value)
    assert not retired(BASELINE)


@pytest.mark.parametrize("end", [services.rollout_rollback, services.rollout_end])
def test_an_ended_rollout_no_longer_holds_its_candidate(live, end):
    """After the rollout ends the candidate retires as any inactive version."""
    end(rollout_id=live.id, actor="shell")
    detector_version_retire(version_id=CANDIDATE)
    assert retired(CANDIDATE)


def test_the_command_prints_the_refusal_and_fails(live):
    """manage.py detector_retire exits non-zero with the service's words."""
    with pytest.raises(CommandError) as refused:
        call_command("detector_retire", CANDIDATE)
    assert str(live.id) in str(refused.value)
    assert not retired(CANDIDATE)


def test_the_admin_action_shows_the_refusal(client, live):
    """The registry admin's Retire action shows the refusal as an error and retires nothing."""
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    response = client.post("/admin/registry/detectorversion/", {"action": "retire", "_selected_action": [CANDIDATE]}, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert any(str(live.id) in m and "candidate" in m for m in shown), shown
    assert not retired(CANDIDATE)
