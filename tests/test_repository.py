"""The repository stands on its own: no file names a path outside it, no runtime state is tracked.

Files checked are those git tracks plus untracked ones it does not ignore (what `git add .` would
commit); without git (an exported tree), the tree is walked, skipping what .gitignore names.
The forbidden strings are built from pieces below, so that this file can scan itself too.
"""

import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, TESTDATA

# A path beside the repository: the old test-photo folder, or the repository root's parent.
BESIDE = re.compile(r"\.\.[/\\]shared\b|\b(?:ROOT|BASE_DIR)\.parent\b")
# An absolute path on one machine. Not when the slash follows a word character, a dot, a colon, a
# slash or a hyphen, so URLs (https://host/home/...) and relative paths (a/home/b) do not count.
MACHINE = re.compile(r"(?<![\w.:/~-])/(?:" + "|".join(["wo" + "rk", "ro" + "ot", "ho" + "me"]) + r")/")
FORBIDDEN = (BESIDE, MACHINE)

# Runtime state: what a running stack, a worker or a test run writes. It belongs in var/ (ignored).
STATE_DIRS = ("control/", "var/")
STATE_FILES = ("*.pid", "*.sqlite3", "*.sqlite3-journal", "*.exchange", "celerybeat-schedule*")

ALWAYS_SKIPPED = {".git"}


def _gitignore_patterns(directory: Path) -> list[str]:
    path = directory / ".gitignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(errors="replace").splitlines())
    return [line for line in lines if line and not line.startswith(("#", "!"))]


def _ignored(relative: str, is_dir: bool, patterns: list[str]) -> bool:
    """A small subset of gitignore: `name`, `*.ext`, `dir/`, `/anchored` (enough for ours)."""
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern[:-1]
        if pattern.startswith("/") or "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def walk_files(root: Path) -> list[str]:
    """Every file under root that no .gitignore names, as posix paths relative to root."""
    found = []

    def walk(directory: Path, rules: list[tuple[str, list[str]]]) -> None:
        # rules: (prefix of the folder holding a .gitignore, its patterns), outermost first.
        base = directory.relative_to(root).as_posix()
        rules = rules + [("" if base == "." else base, _gitignore_patterns(directory))]

        def ignored(path: Path) -> bool:
            relative = path.relative_to(root).as_posix()
            return any(_ignored(relative[len(base) + 1 :] if base else relative, path.is_dir(), patterns) for base, patterns in rules)

        for entry in sorted(directory.iterdir()):
            if entry.name in ALWAYS_SKIPPED or entry.is_symlink() or ignored(entry):
                continue
            if entry.is_dir():
                walk(entry, rules)
            elif entry.is_file():
                found.append(entry.relative_to(root).as_posix())

    walk(root, [])
    return found


def repository_files(root: Path = ROOT) -> list[str]:
    """What git tracks or would add under root; the walked tree when git or the .git folder is missing."""
    if shutil.which("git"):
        listing = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
        )
        if listing.returncode == 0:
            names = {name for name in listing.stdout.decode().split("\0") if name}
            # Deleted in the work tree but still in the index (e.g. before `git rm`): gone for a clone.
            return sorted(name for name in names if (root / name).is_file())
    return walk_files(root)


def outside_paths(root: Path, files: list[str]) -> list[str]:
    """`file:line: text` for each line of a text file that names a path outside the repository."""
    hits = []
    for name in files:
        data = (root / name).read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (the test photos)
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if any(pattern.search(line) for pattern in FORBIDDEN):
                hits.append(f"{name}:{number}: {line.strip()[:120]}")
    return hits


def runtime_state(files: list[str]) -> list[str]:
    """The files that are runtime state rather than source."""
    return [
        name
        for name in files
        if name.startswith(STATE_DIRS) or any(fnmatch.fnmatchcase(name.rsplit("/", 1)[-1], pattern) for pattern in STATE_FILES)
    ]


@pytest.fixture(scope="module")
def files() -> list[str]:
    found = repository_files()
    assert "tests/test_repository.py" in found and "manage.py" in found, found[:20]
    return found


def test_no_file_names_a_path_outside_the_repository(files):
    """No file names a folder beside the repository or an absolute path on one machine."""
    hits = outside_paths(ROOT, files)
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


def test_no_runtime_state_is_tracked(files):
    """Nothing under control/ or var/, no pid, SQLite or Kombu exchange file is part of the repository."""
    state = runtime_state(files)
    assert not state, "runtime state in the repository (move it under var/, ignore it):\n" + "\n".join(state)


def test_test_photos_are_in_the_repository_and_match_their_manifest():
    """Every photo the manifest lists lies in tests/data/photos with its sha256, and none is unlisted."""
    assert TESTDATA == ROOT / "tests" / "data" / "photos"
    manifest = json.loads((TESTDATA / "manifest.json").read_text())
    for entry in manifest:
        assert hashlib.sha256((TESTDATA / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], entry["file"]
    on_disk = {p.name for p in TESTDATA.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"}}
    assert on_disk == {entry["file"] for entry in manifest}


# --- The checks themselves catch what they should, and spare what they should -------------------


@pytest.mark.parametrize(
    "line",
    [
        "photos = ROOT" + ".parent / 'shared' / 'testdata'",
        "see .." + "/shared/testdata for the photos",
        "open('" + "/ho" + "me/alice/photos/a.png')",
        "cd " + "/wo" + "rk/main && make",
        'CACHE="' + "/ro" + 'ot/.cache"',
        "BASE_DIR" + ".parent / 'data'",
    ],
)
def test_the_scan_catches_paths_outside_the_repository(tmp_path, line):
    """A file naming a sibling folder or a machine path is reported, line and all."""
    (tmp_path / "bad.py").write_text("ok = 1\n" + line + "\n")
    assert outside_paths(tmp_path, ["bad.py"]) == [f"bad.py:2: {line}"]


@pytest.mark.parametrize(
    "line",
    [
        "https://example.com/home/index.html",
        "WORKDIR /app",
        "tmp = '/tmp/build.sqlite3'",
        "see docs/work/plan.md and tests/data/photos",
        "~/home/ is not absolute",
        "ROOT = Path(__file__).resolve().parent.parent",
        "the shared exchange of older releases",
    ],
)
def test_the_scan_spares_urls_container_and_relative_paths(tmp_path, line):
    """URLs, container paths, /tmp and paths inside the repository are not reported."""
    (tmp_path / "fine.txt").write_text(line + "\n")
    assert outside_paths(tmp_path, ["fine.txt"]) == []


def test_the_runtime_state_check_catches_state():
    """Kombu's control folder, var/, pid and SQLite files count as state; source does not."""
    names = ["control/detect.exchange", "var/run/devstack.pid", "celeryd.pid", "db.sqlite3", "api/models.py"]
    assert runtime_state(names) == names[:-1]


def test_without_git_the_walk_skips_what_gitignore_names(tmp_path):
    """The fallback walk lists source files and leaves out ignored ones, as git would."""
    (tmp_path / ".gitignore").write_text(".venv\n__pycache__/\n*.pyc\n/var/\n")
    names = ["a.py", "pkg/b.py", "pkg/__pycache__/b.pyc", ".venv/lib/x.py", "var/run/x.pid", "pkg/var/c.py", ".cache/x"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / ".cache" / ".gitignore").write_text("# written by a tool\n*\n")
    (tmp_path / "pkg" / ".gitignore").write_text("/b.py\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("")
    assert walk_files(tmp_path) == [".gitignore", "a.py", "pkg/.gitignore", "pkg/var/c.py"]
