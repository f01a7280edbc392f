"""docs/configuration.md says it lists every setting: hold it to that against env.env, which the
settings themselves are held to (tests/test_deploy_files.py)."""

import re

from tests.conftest import ROOT


def _env_names() -> set[str]:
    text = (ROOT / "env.env").read_text()
    # Set lines and commented-out examples ("# NAME=value") alike: both are settings users read.
    return set(re.findall(r"^(?:#\s*)?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_every_setting_in_env_env_is_in_the_configuration_doc():
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "docs" / "configuration.md").read_text()))
    missing = sorted(_env_names() - documented)
    assert not missing, f"docs/configuration.md lacks {', '.join(missing)}"
