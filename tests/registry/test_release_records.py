"""Release records on a version file (dataset, build, image): recorded, shown, immutable; notes correctable."""

import json
from pathlib import Path

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import User
from django.urls import reverse

from registry import selectors
from registry import services as registry
from registry.evaluation import detector_version_evaluation_store
from registry.models import DetectorVersion
from tests.conftest import ROOT

pytestmark = [pytest.mark.django_db]

RECORDS = {
    "dataset": {"tag": "faces-v1", "sha256": "5" * 64},
    "build": "ci-2026-11-23.4",
    "image": "registry.example.com/face-detect-api:1.2.0",
}


@pytest.fixture
def version_file(tmp_path):
    """Write a version file: mtcnn@1.0.0's real weights and settings as mtcnn@1.9.0, with release records."""

    def write(**changes) -> Path:
        data = json.loads((ROOT / "detector_versions" / "mtcnn@1.0.0.json").read_text())
        data.update(version="1.9.0", notes="Released with its records.", **RECORDS)
        data.update(changes)
        path = tmp_path / f"mtcnn@1.9.0-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(data))
        return path

    return write


def test_release_records_are_recorded_and_shown_by_the_registry(version_file, client, api_client):
    """The version keeps dataset, build and image; the registry's read, the API and the admin page show them."""
    version, created = registry.detector_version_register(path=version_file())
    assert created
    shown = selectors.detector_version_get(version_id="mtcnn@1.9.0")
    assert (shown.dataset, shown.build, shown.image) == (RECORDS["dataset"], RECORDS["build"], RECORDS["image"])
    body = api_client.get("/api/v1/models/mtcnn@1.9.0/").json()
    assert {key: body[key] for key in RECORDS} == RECORDS and body["evaluation"] is None
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    page = client.get(reverse("admin:registry_detectorversion_change", args=[quote(version.id)]))
    assert page.status_code == 200
    html = page.content.decode()
    assert RECORDS["build"] in html and RECORDS["image"] in html and RECORDS["dataset"]["sha256"] in html


def test_release_records_are_optional():
    """The shipped versions declare none: empty records, registered all the same."""
    version = DetectorVersion.objects.get(id="mtcnn@1.0.0")
    assert (version.dataset, version.build, version.image) == ({}, "", "")


@pytest.mark.parametrize(
    "field, other",
    [
        ("dataset", {"tag": "faces-v2", "sha256": "6" * 64}),
        ("build", "ci-2026-11-24.1"),
        ("image", "registry.example.com/face-detect-api:1.2.1"),
    ],
)
def test_the_same_id_with_another_release_record_is_refused(version_file, field, other):
    """A version is immutable: another dataset, build or image under the same id is refused by name."""
    registry.detector_version_register(path=version_file())
    with pytest.raises(registry.RegistryError, match=f"other {field}: versions are immutable"):
        registry.detector_version_register(path=version_file(**{field: other}))
    assert getattr(DetectorVersion.objects.get(id="mtcnn@1.9.0"), field) == RECORDS[field]


def test_notes_can_be_corrected(version_file):
    """Notes are prose: registering the file with other notes updates them and nothing else."""
    registry.detector_version_register(path=version_file())
    version, created = registry.detector_version_register(path=version_file(notes="Corrected: tuned on faces-v1."))
    assert not created
    stored = DetectorVersion.objects.get(id="mtcnn@1.9.0")
    assert stored.notes == "Corrected: tuned on faces-v1." and (stored.build, stored.image) == (RECORDS["build"], RECORDS["image"])


@pytest.mark.parametrize(
    "dataset", ["faces-v1", {"tag": "faces-v1", "sha256": "5" * 64, "url": "http://example.com"}, {"sha256": "5" * 64}]
)
def test_a_malformed_dataset_is_refused(version_file, dataset):
    """dataset is {"tag", "sha256"}: a bare string, an unknown key or no tag is refused and nothing registered."""
    with pytest.raises(registry.RegistryError, match="dataset must be"):
        registry.detector_version_register(path=version_file(dataset=dataset))
    assert not DetectorVersion.objects.filter(id="mtcnn@1.9.0").exists()


def test_an_evaluation_does_not_change_what_the_version_is(version_file):
    """A stored evaluation is not part of the immutable record: the same file registers again unchanged."""
    path = version_file()
    registry.detector_version_register(path=path)
    detector_version_evaluation_store(version_id="mtcnn@1.9.0", evaluation={"precision": 1.0})
    version, created = registry.detector_version_register(path=path)
    assert not created and version.evaluation == {"precision": 1.0}
