"""`wgc derper`'s argument machinery: the argparse types of its flags (ports, Go durations, byte sizes,
rates), the help formatter, and `parse_command_line`, which reads the environment (`$WGC_DERPER_<FLAG>`,
`$DERP_HOSTNAME`, `$DERP_ACME_EMAIL`) and the command line in Go or argparse syntax (derp.goflags); a flag
on the command line wins over the environment. Every mistake is one UsageError line.
"""
from __future__ import annotations

import argparse
import math
import os

from derp.errors import ParseError, UsageError
from derp.goflags import BOOL, SWITCH, VALUE, Flag, env_arguments, normalize
from derp.units import format_duration, parse_duration, parse_size

ENV_PREFIX = "WGC_DERPER_"
ENV_ALIASES = {"DERP_HOSTNAME": "hostname", "DERP_ACME_EMAIL": "acme-email"}   # Netmaker Edge Core's names
ENV_EXCLUDED = ("metrics-token", "version", "help")   # the token has its own order; the rest are commands


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clean line, like every other user mistake
        raise UsageError(f"{message} (see '{self.prog} --help')")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if ("%(default)" in text or not action.option_strings or default is None or default is False
                or default == "" or default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def number(kind: type, low: float, high: float = math.inf, what: str = ""):
    """An argparse type: a finite `kind` in [low, high]."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            bound = f"{low:g}..{high:g}" if high != math.inf else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({what or bound})")
        return value
    return parse


def hostname(text: str) -> str:
    if not text or "/" in text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"not a host name or IP address: {text!r}")
    return text


PORT = number(int, 0, 65535)
SECONDS = number(float, 0)


def duration(low: float = 0.0):
    """An argparse type: a Go duration (`30s`, `1m30s`, `500ms`) or a bare number of seconds, >= low."""
    def parse(text: str) -> float:
        try:
            value = parse_duration(text)
        except ParseError:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 30s, 1m30s, 500ms)") from None
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"{text} is out of range (a duration >= {format_duration(low)})")
        return value
    return parse


DURATION = duration()


def typed(parse):
    """An argparse type from a parser that raises UsageError (e.g. --acme-renew-before)."""
    def parse_typed(text: str):
        try:
            return parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse_typed


def size(text: str) -> int:
    try:
        return parse_size(text)
    except ParseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def rate(text: str) -> float:
    """-accept-connection-limit: connections per second, +Inf (no limit) allowed."""
    if text.strip().lower().lstrip("+") in ("inf", "infinity"):
        return math.inf
    return number(float, 0)(text)


def loopback_port(text: str) -> str:
    """nefia-derp's --metrics-port: metrics on 127.0.0.1:PORT."""
    return f"127.0.0.1:{PORT(text)}"


def flag_spec(parser: argparse.ArgumentParser) -> dict[str, Flag]:
    """Every name the parser accepts (without dashes) -> how derp.goflags rewrites it."""
    spec: dict[str, Flag] = {}
    for action in parser._actions:
        names = list(action.option_strings)
        if isinstance(action, argparse._HelpAction):
            spec.update((o.lstrip("-"), Flag(SWITCH, "--help")) for o in names)
        elif isinstance(action, argparse.BooleanOptionalAction):
            on = [o for o in names if not o.startswith("--no-")]
            off = next(o for o in names if o.startswith("--no-"))
            spec.update((o.lstrip("-"), Flag(BOOL, on[-1], off)) for o in on)
            spec[off[2:]] = Flag(BOOL, off, on[-1])
        else:
            long = next((o for o in names if o.startswith("--")), names[0])
            spec.update((o.lstrip("-"), Flag(VALUE, long)) for o in names)
    return spec


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str],
                       environ: dict[str, str] | None = None) -> argparse.Namespace:
    """The command line in Go or argparse syntax, after the settings from the environment (so flags win).
    A bad variable is a UsageError naming it."""
    spec = flag_spec(parser)
    env_spec = {name: flag for name, flag in spec.items() if name not in ENV_EXCLUDED}
    try:
        from_env = env_arguments(os.environ if environ is None else environ, env_spec, ENV_PREFIX, ENV_ALIASES)
        line = normalize(argv, spec)
    except ParseError as exc:
        raise UsageError(f"{exc} (see 'wgc derper --help')") from None
    for var, tokens in from_env:
        try:
            parser.parse_args(tokens)
        except UsageError as exc:
            raise UsageError(f"${var}: {exc}") from None
    return parser.parse_args([tok for _, toks in from_env for tok in toks] + line)


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version
        return dist_version("wgc")
    except (ImportError, PackageNotFoundError):
        return "unknown"
