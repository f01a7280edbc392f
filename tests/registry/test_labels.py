"""A version's labels: what its detections can be. Declared in its file (default: faces only),
stored, immutable, shown by the API and the admin."""

import json
from pathlib import Path

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.urls import reverse

from registry import services as registry
from registry.models import DetectorVersion
from tests.conftest import ROOT

pytestmark = [pytest.mark.django_db]

OBJECTS_VERSION = ROOT / "tests" / "data" / "versions" / "stub-objects@1.0.0.json"


@pytest.fixture
def version_file(tmp_path):
    """Write a version file: the stub as stub-labels@1.0.0, with the changes given."""

    def write(**changes) -> Path:
        data = {"name": "stub-labels", "version": "1.0.0", "implementation": "stub", "weights": [], "settings": {}}
        data.update(changes)
        path = tmp_path / f"stub-labels-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(data))
        return path

    return write


def test_versions_without_labels_are_face_detectors():
    """The shipped MTCNN files declare no labels: ["face"], and registering them again is a no-op."""
    for version_id in ("mtcnn@1.0.0", "mtcnn@1.1.0"):
        assert DetectorVersion.objects.get(id=version_id).labels == ["face"]
    again, created = registry.detector_version_register(path=ROOT / "detector_versions" / "mtcnn@1.0.0.json")
    assert not created and again.labels == ["face"]


def test_declared_labels_are_stored_in_the_files_order(api_client):
    """The test version of another kind of model: its labels, as declared, in the API too."""
    version, created = registry.detector_version_register(path=OBJECTS_VERSION)
    assert created and version.labels == ["person", "cat", "dog"]
    assert DetectorVersion.objects.get(id="stub-objects@1.0.0").labels == ["person", "cat", "dog"]
    assert registry.detector_version_register(path=OBJECTS_VERSION) == (version, False)
    body = api_client.get("/api/v1/models/stub-objects@1.0.0/").json()
    assert body["labels"] == ["person", "cat", "dog"]
    listed = {v["id"]: v["labels"] for v in api_client.get("/api/v1/models/", {"page_size": 200}).json()["results"]}
    assert listed["mtcnn@1.0.0"] == ["face"] and listed["stub-objects@1.0.0"] == ["person", "cat", "dog"]


def test_labels_are_part_of_what_a_version_is(version_file):
    """Other labels under a registered id are refused by name, as other settings are; ["face"]
    spelt out where the file said nothing is the same version."""
    registry.detector_version_register(path=version_file())
    assert registry.detector_version_register(path=version_file(labels=["face"]))[1] is False  # the default, spelt out
    with pytest.raises(registry.RegistryError, match="other labels: versions are immutable"):
        registry.detector_version_register(path=version_file(labels=["face", "cat"]))
    assert DetectorVersion.objects.get(id="stub-labels@1.0.0").labels == ["face"]


@pytest.mark.parametrize(
    "labels",
    [[], "cat", ["Cat"], ["cat", "cat"], ["1cat"], ["cat dog"], ["a" * 65], [None], ["cat\n"]],
    ids=["empty", "not-a-list", "upper-case", "repeated", "digit-first", "space", "too-long", "null", "newline"],
)
def test_malformed_labels_are_refused(version_file, labels):
    """labels: a non-empty list of distinct label names; anything else registers nothing."""
    with pytest.raises(registry.RegistryError, match="labels"):
        registry.detector_version_register(path=version_file(labels=labels))
    assert not DetectorVersion.objects.filter(id="stub-labels@1.0.0").exists()


def test_the_admin_shows_a_versions_labels(client):
    registry.detector_version_register(path=OBJECTS_VERSION)
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    listing = client.get(reverse("admin:registry_detectorversion_changelist")).content.decode()
    assert "dog" in listing
    page = client.get(reverse("admin:registry_detectorversion_change", args=[quote("stub-objects@1.0.0")]))
    assert page.status_code == 200 and "person" in page.content.decode()
