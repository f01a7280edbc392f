"""The version a fresh database serves: DETECTOR_MODEL when set, else the fastest shipped version
whose faces equal the reference's and whose engine runs here; an active version is never replaced
at start."""

import json
import logging

import pytest
from django.core.management import call_command

from detection import engines
from detection.base import spec_from_file
from detection.errors import DetectorUnavailable
from registry import services as registry
from registry.models import ActiveDetector
from tests.conftest import ROOT

pytestmark = [pytest.mark.django_db]

VERSIONS = ROOT / "detector_versions"


@pytest.fixture
def fresh(settings):
    """A fresh database (no active version) and DETECTOR_MODEL empty, as env.env ships it."""
    ActiveDetector.objects.all().delete()
    settings.DETECTOR_MODEL = ""
    settings.DETECTOR_DEVICE = "cpu"
    return settings


def test_a_fresh_database_activates_the_fastest_exact_version(fresh):
    """mtcnn@1.2.0 (OpenVINO): 1.1.0's faces at twice the speed."""
    assert registry.detector_bootstrap().id == "mtcnn@1.2.0"
    assert registry.detector_version_active().id == "mtcnn@1.2.0"


def test_the_bootstrap_command_reports_the_default(fresh, capsys):
    call_command("detector_register", "--bootstrap")
    assert capsys.readouterr().out.startswith("active: mtcnn@1.2.0+weights.")


def test_detector_model_still_chooses_on_a_fresh_database(fresh):
    fresh.DETECTOR_MODEL = "mtcnn@1.1.0"
    assert registry.detector_bootstrap().id == "mtcnn@1.1.0"


def test_an_unknown_detector_model_is_refused(fresh):
    fresh.DETECTOR_MODEL = "mtcnn@9.9.9"
    with pytest.raises(registry.RegistryError, match="no version mtcnn@9.9.9"):
        registry.detector_bootstrap()
    assert registry.detector_version_active() is None


@pytest.mark.parametrize("detector_model", ["", "mtcnn@1.2.0"])
def test_a_restart_keeps_the_operators_choice(fresh, detector_model, caplog):
    """The bootstrap never switches an active version, whatever DETECTOR_MODEL says; when it
    names another version, the log says how to switch."""
    registry.detector_version_activate(version_id="mtcnn@1.1.0")
    fresh.DETECTOR_MODEL = detector_model
    with caplog.at_level(logging.WARNING, logger="registry.services"):
        assert registry.detector_bootstrap().id == "mtcnn@1.1.0"
    assert registry.detector_version_active().id == "mtcnn@1.1.0"
    warned = [r.getMessage() for r in caplog.records if "only chooses on a fresh database" in r.getMessage()]
    assert bool(warned) == bool(detector_model)


def test_activation_without_replace_keeps_the_active_version():
    """The bootstrap's activation leaves an active version alone and returns it."""
    assert registry.detector_version_activate(version_id="mtcnn@1.2.0", replace=False).id == "mtcnn@1.0.0"
    assert registry.detector_version_active().id == "mtcnn@1.0.0"


def test_on_cuda_the_default_is_the_torch_version(fresh):
    """OpenVINO runs on the CPU only: a GPU host gets mtcnn@1.1.0, the same faces on torch."""
    fresh.DETECTOR_DEVICE = "cuda"
    assert registry.detector_bootstrap().id == "mtcnn@1.1.0"


def test_a_version_whose_engine_is_not_installed_is_skipped(fresh, monkeypatch):
    monkeypatch.setitem(engines.PRELOAD, "mtcnn-openvino", ("fda_no_such_runtime",))
    assert registry.detector_version_default().id == "mtcnn@1.1.0"


def test_a_retired_version_is_skipped(fresh):
    registry.detector_version_retire(version_id="mtcnn@1.2.0")
    assert registry.detector_version_default().id == "mtcnn@1.1.0"


def test_no_default_that_can_run_is_an_error_naming_the_setting(fresh, monkeypatch):
    fresh.DETECTOR_DEVICE = "cuda"
    monkeypatch.setitem(engines.PRELOAD, "mtcnn", ("fda_no_such_runtime",))
    with pytest.raises(registry.RegistryError, match="DETECTOR_MODEL"):
        registry.detector_bootstrap()
    assert registry.detector_version_active() is None


@pytest.mark.parametrize("rank", [0, -1, "1", True, 1.5])
def test_a_bad_default_rank_is_refused_at_registration(tmp_path, rank):
    data = json.loads((VERSIONS / "mtcnn@1.1.0.json").read_text())
    data.update(version="9.0.0", default_rank=rank)
    path = tmp_path / "ranked.json"
    path.write_text(json.dumps(data))
    with pytest.raises(registry.RegistryError, match="default_rank"):
        registry.detector_version_register(path=path)


def test_only_versions_with_the_references_faces_are_ranked():
    """A default must give what the reference gives: the ranked files have mtcnn@1.1.0's weights
    and settings (1.2.0's equality with 1.1.0 is tests/detection/test_mtcnn_openvino.py's)."""
    reference = json.loads((VERSIONS / "mtcnn@1.1.0.json").read_text())
    ranked = {}
    for path in VERSIONS.glob("*.json"):
        data = json.loads(path.read_text())
        if "default_rank" in data:
            ranked[data["default_rank"]] = f"{data['name']}@{data['version']}"
            assert (data["weights"], data["settings"]) == (reference["weights"], reference["settings"]), path.name
    assert ranked == {1: "mtcnn@1.2.0", 2: "mtcnn@1.1.0"}


@pytest.mark.parametrize("path", sorted(VERSIONS.glob("*.json")), ids=lambda path: path.stem)
def test_the_engines_said_to_be_cpu_only_refuse_cuda(path):
    """loadable() tells the devices without loading; the engines agree when they load."""
    spec = spec_from_file(path)
    if spec.implementation in engines.CUDA_IMPLEMENTATIONS:
        assert engines.loadable(spec.implementation, device="cuda")
        return
    assert not engines.loadable(spec.implementation, device="cuda")
    with pytest.raises(DetectorUnavailable, match="CPU only"):
        engines.IMPLEMENTATIONS[spec.implementation](spec, "cuda")
