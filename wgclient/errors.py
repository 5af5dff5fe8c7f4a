"""The wgclient package's exceptions: one root, ParseError for garbage from the wire, UsageError for caller/user mistakes."""
from __future__ import annotations


class Error(Exception):
    """Root of every exception the wgclient package raises on purpose."""


class ParseError(Error):
    """Input from the network or a file could not be parsed."""


class UsageError(Error):
    """The caller or the user asked for something invalid."""


class ConfigError(UsageError):
    """A wg-quick style configuration file is invalid; names the file, the 1-based line and the key.

    str() reads like ``wg0.conf:7: PublicKey: not a valid base64 key of 32 bytes``.
    """

    def __init__(self, path: str, line: int | None, key: str | None, message: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.message = message
        where = path if line is None else f"{path}:{line}"
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        super().__init__(text)
