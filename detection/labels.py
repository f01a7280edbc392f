"""What a detection is: its label, and the rule a label name follows.

Face models label every detection "face"; other models label it with their class name ("cat",
"person"). A version file declares the labels its version can return (default: only "face"), and
an upload may ask to keep only some of them. Plain Python: the registry, the jobs and the API
share this one rule.
"""

import re
from collections.abc import Iterable

FACE = "face"
# The labels of a version whose file declares none: every version before labels were declared
# was a face detector.
DEFAULT_LABELS: tuple[str, ...] = (FACE,)

# A label name: lower-case ASCII letters, digits and underscores, starting with a letter, 1 to 64
# characters. Written for Python's re, ECMA-262 and Rust's regex alike (the API's schema
# publishes it): no \w, no lookarounds.
LABEL_MAX_LENGTH = 64
LABEL_PATTERN = rf"^[a-z][a-z0-9_]{{0,{LABEL_MAX_LENGTH - 1}}}$"
LABEL_RE = re.compile(LABEL_PATTERN)

# How many distinct labels an upload may ask to keep.
MAX_LABELS = 32


def label_valid(value: object) -> bool:
    """Whether ``value`` is a label name (fullmatch: Python's `$` would also match before a
    final newline)."""
    return isinstance(value, str) and LABEL_RE.fullmatch(value) is not None


def labels_unique(labels: Iterable[str]) -> list[str]:
    """``labels`` without repeats, first occurrence first."""
    return list(dict.fromkeys(labels))
