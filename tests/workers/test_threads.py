"""How many CPU threads each detection worker process gives its detector."""

import os

from workers.process import detector_threads


def cores() -> int:
    return len(os.sched_getaffinity(0))


def test_by_default_the_cores_are_shared_among_the_pool(settings):
    settings.DETECTOR_THREADS = 0
    assert detector_threads(1) == cores()
    assert detector_threads(cores()) == 1
    assert detector_threads(cores() * 4) == 1  # never 0: at least one thread each


def test_an_explicit_count_wins(settings):
    settings.DETECTOR_THREADS = 3
    assert detector_threads(1) == 3 and detector_threads(64) == 3


def test_the_older_name_still_sets_it():
    """DETECTOR_TORCH_THREADS (the setting's name before it covered every engine) is honoured."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "DETECTOR_TORCH_THREADS": "2", "DJANGO_SETTINGS_MODULE": "face_detect_api.settings"}
    env.pop("DETECTOR_THREADS", None)
    code = "import django; django.setup(); from django.conf import settings; print(settings.DETECTOR_THREADS)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "2", out.stderr
