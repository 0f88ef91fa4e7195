"""The one exception tree of Observatory.

Hot paths do not raise these: they return values (``ProtocolError``, ``Disconnect``). Exceptions are
for start-up and for programming errors a caller cannot sensibly handle inline.
"""


class ObservatoryError(Exception):
    """Base of every error Observatory raises on purpose."""


class ConfigError(ObservatoryError):
    """A configuration value is wrong; the message names the option and where it came from."""


class BootError(ObservatoryError):
    """A child process cannot start (port taken, endpoint not bindable); it exits with EXIT_BOOT_ERROR."""


class ClientError(ObservatoryError):
    """Raised by the Python client when the server answers a request with an error."""

    def __init__(self, code: str, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}  # the rest of the error's data, e.g. retryAfter


class ConnectionClosedError(ObservatoryError):
    """Raised by the Python client when the connection is gone while a call waits on it."""


class StateError(ObservatoryError):
    """A saved state file cannot be read back; the caller starts afresh and says so."""
