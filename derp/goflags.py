"""Go-style command lines and environment for argparse: what derper (Go's `flag` package) and nefia-derp
accept, rewritten into the `--name=value` form argparse parses. Pure.

Go's syntax: one or two dashes (`-hostname` = `--hostname`); a value after `=` or as the next argument
(`-a :443`, `-a=:443`; the next argument is taken even when it starts with a dash, as Go does); a boolean
flag alone means true, and takes a value only after `=` (`-stun=false`, `-stun=0`; Go's ParseBool
spellings). `normalize` rewrites each known flag to its argparse option (`--addr=:443`, `--stun`,
`--no-stun`) and passes everything else through untouched, so argparse still reports unknown flags and
stray arguments as before. `--` ends the flags.

`env_arguments` turns environment variables into the same arguments: `<PREFIX><NAME>` for every flag
(`WGC_DERPER_HOSTNAME`, `WGC_DERPER_STUN=false`, dashes as underscores) and named aliases
(`DERP_HOSTNAME`). Empty variables are ignored (compose's `${UNSET}`). The caller puts these arguments
before the command line's, so a flag on the command line wins over the environment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from derp.errors import ParseError
from derp.units import parse_bool

VALUE = "value"
BOOL = "bool"
SWITCH = "switch"   # takes no value and has no negation (--help, --version)


@dataclass(frozen=True)
class Flag:
    kind: str             # VALUE, BOOL or SWITCH
    option: str           # the argparse option that sets it (for BOOL: that sets it true)
    negation: str = ""    # BOOL only: the argparse option that sets it false


def _name(arg: str) -> tuple[str, bool, str]:
    body = arg[2:] if arg.startswith("--") else arg[1:]
    name, eq, value = body.partition("=")
    return name, bool(eq), value


def normalize(argv: Iterable[str], flags: Mapping[str, Flag]) -> list[str]:
    """argv in Go or argparse syntax -> argparse's `--name=value` form. `flags` maps every accepted name
    (without dashes: "a", "addr", "stun", "no-stun") to its Flag. ParseError for a bad boolean value."""
    args = list(argv)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not isinstance(arg, str):
            raise ParseError("arguments must be text")
        if arg == "--":
            out.extend(args[i - 1:])
            break
        if len(arg) < 2 or not arg.startswith("-") or arg.startswith("---"):
            out.append(arg)
            continue
        name, has_value, value = _name(arg)
        flag = flags.get(name)
        if flag is None:
            out.append(arg)
        elif flag.kind == VALUE:
            if has_value:
                out.append(f"{flag.option}={value}")
            elif i < len(args):
                out.append(f"{flag.option}={args[i]}")
                i += 1
            else:
                out.append(flag.option)   # argparse says "expected one argument"
        elif flag.kind == BOOL:
            on = True
            if has_value:
                try:
                    on = parse_bool(value)
                except ParseError:
                    raise ParseError(f"invalid boolean value {value!r} for -{name} (true or false)") from None
            out.append(flag.option if on else flag.negation)
        else:
            if has_value:
                raise ParseError(f"-{name} takes no value")
            out.append(flag.option)
    return out


def env_name(prefix: str, name: str) -> str:
    return prefix + name.upper().replace("-", "_")


def env_arguments(environ: Mapping[str, str], flags: Mapping[str, Flag], prefix: str,
                  aliases: Mapping[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """[(variable, arguments)] for every set, non-empty variable naming a flag: `<prefix><NAME>` for each
    VALUE or BOOL flag name (negations such as no-stun excluded), then each alias variable -> flag name
    whose flag exists. Prefixed variables come after the aliases so they win over them. ParseError for a
    boolean variable that is not a Go boolean."""
    found: list[tuple[str, list[str]]] = []
    for var, name in sorted((aliases or {}).items()):
        if name in flags:
            found.extend(_env_one(environ, var, name, flags[name]))
    for name in sorted(flags):
        flag = flags[name]
        if flag.kind == SWITCH or (name.startswith("no-") and name[3:] in flags):
            continue
        found.extend(_env_one(environ, env_name(prefix, name), name, flag))
    return found


def _env_one(environ: Mapping[str, str], var: str, name: str, flag: Flag) -> list[tuple[str, list[str]]]:
    value = environ.get(var, "")
    if not value:
        return []
    if flag.kind == BOOL:
        try:
            on = parse_bool(value.strip())
        except ParseError:
            raise ParseError(f"${var}: invalid boolean {value[:40]!r} (true or false)") from None
        return [(var, [flag.option if on else flag.negation])]
    return [(var, [f"{flag.option}={value}"])]
