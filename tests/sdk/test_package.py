"""The client package stands alone: it imports nothing of the service, and what it knows of the
service's statuses is what the service says."""

import ast
import sys
from pathlib import Path

import face_detect_client

from jobs.models import TERMINAL_STATUSES

PACKAGE = Path(face_detect_client.__file__).parent
ALLOWED = {"httpx", "standardwebhooks", "face_detect_client"}


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_imports_only_the_standard_library_httpx_and_standardwebhooks():
    """Installed elsewhere it has no Django, no project: any other import would break there."""
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 4
    imported = set().union(*(_top_level_imports(path) for path in modules))
    assert "httpx" in imported and "standardwebhooks" in imported
    assert imported - ALLOWED - sys.stdlib_module_names == set()


def test_the_client_knows_every_terminal_status_the_service_has():
    """wait() stops at exactly the statuses jobs/models.py calls terminal."""
    assert face_detect_client.TERMINAL_STATUSES == {str(status) for status in TERMINAL_STATUSES}
