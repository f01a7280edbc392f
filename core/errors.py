"""Domain errors: what a service refuses, in words a client can act on, with no HTTP in them.

A service raises one of these; the API turns the kind into a status code (api/errors.py), the
admin and the management commands show the message. ``code`` is the stable machine-readable
reason, ``field`` the input at fault when there is one.
"""


class DomainError(Exception):
    """The input is not acceptable (the API answers 400)."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class NotFound(DomainError):
    """No such thing, or none this caller may see (404)."""


class Conflict(DomainError):
    """The request contradicts the current state (409)."""


class Gone(DomainError):
    """It existed and was deleted on purpose: erased on request or past its retention (410)."""


class TooLarge(DomainError):
    """The upload or the image is larger than accepted (413)."""


class UnsupportedFormat(DomainError):
    """A kind of input that is understood but not accepted (415)."""


class Unavailable(DomainError):
    """A dependency is down or not configured; trying again later may work (503)."""
