"""Facts about the machine a process runs on (plain Python: gunicorn's config reads it before
Django is set up)."""

import os


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
