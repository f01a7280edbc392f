"""The files a user deploys with: they parse, and they name what they must."""

import yaml

from tests.conftest import ROOT


def test_compose_names_every_service_and_scales_workers():
    """postgres, rabbitmq, redis, minio, web, worker (+ deliverer, beat); workers can be scaled."""
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "rabbitmq", "redis", "minio", "web", "worker", "deliverer", "beat"}
    assert services["minio"]["image"].startswith("minio/minio")
    for name in ("web", "worker", "deliverer", "beat"):
        assert services[name]["build"] == "." and services[name]["env_file"] == "env.env"
        assert services[name]["environment"]["CELERY_BROKER_URL"].startswith("amqp://")
    # A fixed name or a published port would make `--scale worker=4` fail.
    for name in ("worker", "deliverer"):
        assert "container_name" not in services[name] and "ports" not in services[name]
    assert "-Q detect" in services["worker"]["command"] and "-Q deliver" in services["deliverer"]["command"]


def test_every_setting_read_is_documented_in_env_env():
    """Each env("X") in the settings has a line X= in env.env."""
    import re

    settings_text = (ROOT / "face_detect_api" / "settings.py").read_text()
    read = set(re.findall(r'env(?:\.\w+)?\("([A-Z0-9_]+)"', settings_text)) - {"CELERY_BROKER_FOLDER"}
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / "env.env").read_text(), re.M))
    assert read - documented == set()
