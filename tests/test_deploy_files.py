"""The files a user deploys with: they parse, and they name what they must."""

import json
import re

import yaml

from tests.conftest import ROOT


def test_compose_names_every_service_and_scales_workers():
    """postgres, rabbitmq, redis, minio, web, worker (+ deliverer, beat); workers can be scaled."""
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "rabbitmq",
        "redis",
        "minio",
        "minio-lifecycle",
        "web",
        "worker",
        "deliverer",
        "beat",
        "prometheus",
        "grafana",
        "flower",
    }
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


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]


def _mounts(service: dict) -> dict[str, str]:
    """Bind mounts of a service: container path -> repository file or folder (which must exist)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{source} is mounted but not in the repository"
            mounts[target] = source[2:]
    return mounts


def _defined_metric_names() -> set[str]:
    text = (ROOT / "core" / "metrics.py").read_text() + (ROOT / "api" / "metrics.py").read_text()
    return set(re.findall(r'"(fda_[a-z0-9_]+)"', text))


def test_every_metrics_process_has_a_multiprocess_dir_and_workers_serve_their_own():
    """web, worker and deliverer share a tmpfs metrics dir per container; the workers serve on a port."""
    services = _compose()
    for name in ("web", "worker", "deliverer"):
        path = services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert path in services[name]["tmpfs"], name
    for name in ("worker", "deliverer"):
        port = services[name]["environment"]["WORKER_METRICS_PORT"]
        assert int(port) > 0 and str(port) in map(str, services[name]["expose"])
    # Not in env.env as an empty value: compose would hand "" to every container, and
    # prometheus_client takes even an empty value for a directory.
    assert not re.search(r"^PROMETHEUS_MULTIPROC_DIR=", (ROOT / "env.env").read_text(), re.M)


def test_prometheus_scrapes_the_api_and_every_worker_container():
    """The mounted scrape config: web:8000/metrics, and the worker and deliverer services by DNS on their port."""
    services = _compose()
    mounts = _mounts(services["prometheus"])
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    config = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    web_port = services["web"]["command"].split("--bind 0.0.0.0:")[1].split()[0]
    assert [f"web:{web_port}"] == [t for c in api["static_configs"] for t in c["targets"]]
    for name in ("worker", "deliverer"):
        sd = [c for job in jobs.values() for c in job.get("dns_sd_configs", []) if name in c["names"]]
        assert len(sd) == 1, name
        assert sd[0]["type"] == "A" and int(sd[0]["port"]) == int(services[name]["environment"]["WORKER_METRICS_PORT"])


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard():
    """Datasource -> the prometheus service; the dashboard folder is mounted where the provider looks; panels use known metrics."""
    services = _compose()
    mounts = _mounts(services["grafana"])
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    datasources = [
        source for path in (provisioning / "datasources").glob("*.yml") for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert len(datasources) == 1 and datasources[0]["type"] == "prometheus"
    host, port = datasources[0]["url"].split("//")[1].split(":")
    assert host == "prometheus" and f":{port}" in services["prometheus"]["ports"][0]
    providers = [p for path in (provisioning / "dashboards").glob("*.yml") for p in yaml.safe_load(path.read_text())["providers"]]
    folder = providers[0]["options"]["path"]
    assert folder in mounts
    dashboards = list((ROOT / mounts[folder]).glob("*.json"))
    assert dashboards
    known = _defined_metric_names()
    used = set()
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasources[0]["uid"], panel["title"]
            for target in panel["targets"]:
                used |= set(re.findall(r"fda_[a-z0-9_]+", target["expr"]))
    stems = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    assert stems - known == set(), "dashboard uses metrics the code does not define"
    for figure in ("fda_detection_seconds_bucket", "fda_jobs_finished_total", "fda_queue_depth", "fda_detection_cpu_seconds_total"):
        assert figure in used


def test_flower_is_optional_and_never_served_without_a_login():
    """compose: under a profile, refuses without FLOWER_BASIC_AUTH, loopback port; make flower: loopback and basic auth."""
    flower = _compose()["flower"]
    assert flower["profiles"] == ["monitoring"]
    assert 'test -n "$$FLOWER_BASIC_AUTH"' in flower["command"] and '--basic-auth="$$FLOWER_BASIC_AUTH"' in flower["command"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nflower:")[1].split("\n\n")[0]
    assert "--address=127.0.0.1" in recipe and '--basic-auth="$$FLOWER_BASIC_AUTH"' in recipe and 'test -n "$$FLOWER_BASIC_AUTH"' in recipe


def test_metrics_packages_are_pinned():
    """prometheus-client and flower are pinned in the runtime requirements (the image installs them)."""
    pins = dict(
        line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line and not line.startswith("#")
    )
    assert pins["prometheus-client"] == "0.26.0" and pins["flower"] == "2.2.0"


def _lifecycle_run(tmp_path, **env) -> tuple[list[list[str]], list[str]]:
    """Run the minio-lifecycle service's script as its container would (compose turns $$ into
    $), with a stand-in `mc` that records its arguments and what it reads. Returns (calls, stdins)."""
    import os
    import subprocess

    script = _compose()["minio-lifecycle"]["command"][0]
    # Compose would interpolate a lone $ from the host's environment: every one must be escaped.
    assert re.search(r"(?<!\$)\$(?!\$)", script.replace("$$", "")) is None
    fake = tmp_path / "bin" / "mc"
    fake.parent.mkdir()
    log = tmp_path / "calls"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nif [ "$1 $2" = "ilm import" ]; then cat > {tmp_path}/stdin; fi\n')
    fake.chmod(0o755)
    run_env = {"PATH": f"{fake.parent}:{os.environ['PATH']}", **env}
    subprocess.run(["sh", "-c", script.replace("$$", "$")], env=run_env, check=True, capture_output=True)
    calls = [line.split() for line in log.read_text().splitlines()]
    stdin = tmp_path / "stdin"
    return calls, [stdin.read_text()] if stdin.exists() else []


def test_compose_applies_the_retention_as_bucket_lifecycle_rules(tmp_path):
    """RETENTION_DAYS_* become one rule per prefix, a day later than the app's own deletion."""
    calls, stdins = _lifecycle_run(tmp_path, S3_BUCKET="photos", RETENTION_DAYS_ORIGINALS="30", RETENTION_DAYS_ANNOTATED="90")
    assert ["mb", "--ignore-existing", "local/photos"] in calls and ["ilm", "import", "local/photos"] in calls
    (imported,) = stdins
    rules = {rule["Filter"]["Prefix"]: rule for rule in json.loads(imported)["Rules"]}
    assert rules["originals/"]["Expiration"] == {"Days": 31} and rules["annotated/"]["Expiration"] == {"Days": 91}
    assert {rule["Status"] for rule in rules.values()} == {"Enabled"}
    assert _compose()["minio-lifecycle"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_compose_lifecycle_without_retention_removes_the_rules(tmp_path):
    """Both 0 (the default): no rule, and one left from before is removed."""
    calls, stdins = _lifecycle_run(tmp_path, RETENTION_DAYS_ORIGINALS="0", RETENTION_DAYS_ANNOTATED="0")
    assert stdins == [] and ["ilm", "rule", "rm", "--all", "--force", "local/face-detect-api"] in calls


def test_compose_lifecycle_with_one_kind_only(tmp_path):
    calls, stdins = _lifecycle_run(tmp_path, RETENTION_DAYS_ORIGINALS="7", RETENTION_DAYS_ANNOTATED="0")
    (imported,) = stdins
    assert [rule["Filter"]["Prefix"] for rule in json.loads(imported)["Rules"]] == ["originals/"]
