"""The engines' shared exceptions, in a module of their own so that base.py and precision.py can
both raise them without importing each other."""


class DetectorUnavailable(RuntimeError):
    """The detector cannot run here (e.g. CUDA asked for but absent)."""
