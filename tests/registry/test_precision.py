"""A version's precision is recorded: the registry fills in f32 for the engines that could drift,
and a database registered before precision was recorded migrates to the same record, so that the
shipped files (which now name it) register again as the same versions."""

import json

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from detection.base import settings_hash
from registry import services as registry
from registry.models import DetectorVersion
from tests.conftest import ROOT

VERSIONS = ROOT / "detector_versions"


@pytest.mark.django_db
def test_a_file_naming_no_precision_is_recorded_at_f32(tmp_path):
    data = json.loads((VERSIONS / "mtcnn@1.2.0.json").read_text())
    data["version"] = "9.1.0"
    del data["settings"]["precision"]
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(data))
    version, created = registry.detector_version_register(path=path)
    assert created and version.settings["precision"] == "f32"
    assert version.settings_hash == settings_hash({**data["settings"], "precision": "f32"})
    # The same file with the precision written out is the same version, not a changed one.
    data["settings"]["precision"] = "f32"
    path.write_text(json.dumps(data))
    assert registry.detector_version_register(path=path) == (version, False)


@pytest.mark.django_db
def test_every_shipped_engine_that_could_drift_names_its_precision():
    for path in VERSIONS.glob("*.json"):
        data = json.loads(path.read_text())
        if data["implementation"] in ("mtcnn", "mtcnn-openvino", "blazeface"):
            assert data["settings"].get("precision") == "f32", path.name


@pytest.mark.django_db(transaction=True)
def test_rows_registered_before_precision_was_recorded_migrate_to_the_same_versions():
    """A 1.2.0 row as the previous release registered it (no precision) gets f32 and the hash of
    its settings with it; registering the shipped file then changes nothing."""
    executor = MigrationExecutor(connection)
    executor.migrate([("registry", "0003_detectorversion_labels")])
    apps = MigrationExecutor(connection).loader.project_state([("registry", "0003_detectorversion_labels")]).apps
    Old = apps.get_model("registry", "DetectorVersion")
    data = json.loads((VERSIONS / "mtcnn@1.2.0.json").read_text())
    old_settings = {k: v for k, v in data["settings"].items() if k != "precision"}
    Old.objects.filter(id="mtcnn@1.2.0").delete()
    Old.objects.create(
        id="mtcnn@1.2.0",
        name="mtcnn",
        version="1.2.0",
        implementation="mtcnn-openvino",
        weights=data["weights"],
        settings=old_settings,
        settings_hash=settings_hash(old_settings),
        labels=["face"],
    )
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
        row = DetectorVersion.objects.get(id="mtcnn@1.2.0")
        assert row.settings == {**old_settings, "precision": "f32"}
        assert row.settings_hash == settings_hash(row.settings)
        version, created = registry.detector_version_register(path=VERSIONS / "mtcnn@1.2.0.json")
        assert not created and version.settings_hash == row.settings_hash
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
