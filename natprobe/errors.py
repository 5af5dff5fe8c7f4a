"""The natprobe package's exceptions: one root, ParseError for garbage from the wire, UsageError for caller/user mistakes."""


class Error(Exception):
    """Root of every exception the natprobe package raises on purpose."""


class ParseError(Error):
    """Input from the network or a file could not be parsed."""


class UsageError(Error):
    """The caller or the user asked for something invalid."""
