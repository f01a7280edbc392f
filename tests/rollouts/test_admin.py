"""The admin: rollouts listed and shown read-only with their event log, transitions as actions,
and events that nothing there can add, edit or delete."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import User

from registry.services import detector_version_active
from rollouts import services
from rollouts.models import Rollout, RolloutEvent

from .conftest import BASELINE, CANDIDATE

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def staff_client(client):
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    return client


@pytest.fixture
def live():
    """A running two-stage canary started from the shell."""
    return services.rollout_start(candidate=CANDIDATE, mode="canary", actor="shell", stages=[{"weight": 5}, {"weight": 50}])


def act(staff_client, action: str, rollout: Rollout):
    return staff_client.post("/admin/rollouts/rollout/", {"action": action, "_selected_action": [str(rollout.id)]}, follow=True)


def test_list_shows_mode_versions_status_weight_and_stage(staff_client, live):
    """The list: mode, baseline, candidate, status, weight and stage of each rollout; filters work."""
    for query in ("", "?status__exact=running", "?mode__exact=canary", f"?q={live.id}"):
        response = staff_client.get(f"/admin/rollouts/rollout/{query}")
        assert response.status_code == 200, query
        html = response.content.decode()
        assert str(live.id) in html and BASELINE in html and CANDIDATE in html and "1 of 2" in html, query
    assert str(live.id) not in staff_client.get("/admin/rollouts/rollout/?status__exact=promoted").content.decode()


def test_detail_is_read_only_with_the_event_log(staff_client, live):
    """The page shows the plan and the events inline, with no field to edit and no delete link."""
    services.rollout_pause(rollout_id=live.id, actor="shell", reason="a reason to find")
    html = staff_client.get(f"/admin/rollouts/rollout/{live.id}/change/").content.decode()
    assert "a reason to find" in html and "Workers warm" in html and "0 of 0 live detection workers" in html
    assert 'name="weight"' not in html and 'name="status"' not in html  # shown, not editable
    assert "events-0-DELETE" not in html and "/delete/" not in html
    assert staff_client.post(f"/admin/rollouts/rollout/{live.id}/change/", {"weight": 100}).status_code == 403
    assert Rollout.objects.get().weight == 5


@pytest.mark.parametrize(
    "actions, status, weight, active",
    [
        (["pause"], "paused", 5, BASELINE),
        (["pause", "resume"], "running", 5, BASELINE),
        (["advance"], "running", 50, BASELINE),
        (["promote"], "promoted", 100, CANDIDATE),
        (["rollback"], "rolled_back", 0, BASELINE),
        (["end"], "ended", 0, BASELINE),
    ],
)
def test_actions_change_the_rollout_and_write_events_by_the_admin(staff_client, live, actions, status, weight, active):
    """Each action runs the transition with actor admin:<username>, reported as a success."""
    for action in actions:
        response = act(staff_client, action, live)
        assert response.status_code == 200 and "success" in response.content.decode()
    live.refresh_from_db()
    assert (live.status, live.weight, detector_version_active().id) == (status, weight, active)
    events = list(live.events.order_by("at", "id"))
    assert [e.action for e in events] == ["start", *actions] and {e.actor for e in events[1:]} == {"admin:ops"}


def test_a_refused_action_is_an_error_message(staff_client, live):
    """Resuming a running rollout: the service's refusal shown as an error; nothing changes."""
    response = act(staff_client, "resume", live)
    assert response.status_code == 200
    assert "The rollout is not paused." in response.content.decode()
    assert live.events.count() == 1
    act(staff_client, "promote", live)
    assert "nothing more can change it" in act(staff_client, "pause", live).content.decode()


def test_events_cannot_be_added_edited_or_deleted(staff_client, live):
    """No add, change or delete for events (their own page or the inline) nor for rollouts."""
    event = RolloutEvent.objects.get()
    request = type("Request", (), {"user": User.objects.get(username="ops")})()
    event_admin, rollout_admin = admin.site._registry[RolloutEvent], admin.site._registry[Rollout]
    assert not event_admin.has_add_permission(request)
    assert not event_admin.has_change_permission(request, event) and not event_admin.has_delete_permission(request, event)
    assert not rollout_admin.has_delete_permission(request, live) and not rollout_admin.has_add_permission(request)
    for inline in rollout_admin.get_inline_instances(request, live):
        assert not inline.has_add_permission(request, live)
        assert not inline.has_change_permission(request, live) and not inline.has_delete_permission(request, live)
    assert staff_client.get("/admin/rollouts/rolloutevent/").status_code == 200
    assert staff_client.get(f"/admin/rollouts/rolloutevent/{event.id}/change/").status_code == 200
    assert staff_client.post(f"/admin/rollouts/rolloutevent/{event.id}/delete/", {"post": "yes"}).status_code == 403
    assert staff_client.post(f"/admin/rollouts/rollout/{live.id}/delete/", {"post": "yes"}).status_code == 403
    assert staff_client.get("/admin/rollouts/rolloutevent/add/").status_code == 403
    assert RolloutEvent.objects.count() == 1 and Rollout.objects.count() == 1


def test_the_model_refuses_to_change_or_delete_an_event(live):
    """Append-only below the admin too: save of a stored event and delete both raise."""
    event = RolloutEvent.objects.get()
    event.reason = "rewritten"
    with pytest.raises(ValueError):
        event.save()
    with pytest.raises(ValueError):
        event.delete()
    assert RolloutEvent.objects.get().reason != "rewritten"
