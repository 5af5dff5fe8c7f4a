"""The lifecycle of one `wgc up` process: pid file, daemonizing, signals, hooks, readiness, and `down`.

* The pid file `<pid dir>/<name>.pid` (default /var/run/wgc, env WGC_PID_DIR) is held with an flock
  for the daemon's whole life: a held lock means "up", so a stale file from a crashed daemon never
  blocks a new `up` and `down` never signals a recycled pid.
* `run()` in the foreground logs to stderr. As a daemon it forks twice (setsid in between), logs to
  `<log dir>/<name>.log` (default /var/log/wgc, env WGC_LOG_DIR), and tells the waiting parent over a
  pipe either "ready" or the one-line error that stopped it, so `wgc up` exits 0 only once the
  interface is up, and 1 with the reason otherwise.
* The pid file is locked by `wgc up` itself before it forks (the daemon inherits the lock), so a second
  `up` of a running interface fails in its own process with one line and never touches the running
  daemon's log.
* The log is rotated at LOG_MAX_BYTES (NAME.log, NAME.log.1 .. .LOG_BACKUPS); stdout and stderr follow
  the current file, so output from outside `logging` (hooks, a crash) lands there too.
* SIGTERM and SIGINT cancel `serve()`, whose `finally` undoes everything; the pid file goes last.
  SIGHUP reloads the DERP map from its sources (wgclient/aio/derpmap_source.py).
* wg-quick hooks: PreUp before `serve()`, PostUp once ready, PreDown on the stop signal before the
  teardown, then `SaveConfig = true` writes the running interface back into its file (saveconf.py,
  through the UAPI socket as `wgc save` does), PostDown after the teardown; run by bash with `%i` replaced by the interface name, as wg-quick does.
  A failing PreUp stops `up`; the others are logged.
* `stop(name)` signals the daemon and waits until it has exited and its UAPI socket and interface are
  gone. Host changes a dead daemon left (DNS, policy rules: hostsetup.py's journal) are undone by the
  next `up` (once it holds the pid lock) or by `down`.
"""
from __future__ import annotations

import asyncio
import fcntl
import inspect
import logging
import logging.handlers
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Callable

from ..config import InterfaceConfig
from ..errors import UsageError
from .uapi_server import socket_path
from .unixsock import socket_is_live

log = logging.getLogger("wgclient.daemon")

DEFAULT_PID_DIR = "/var/run/wgc"
DEFAULT_LOG_DIR = "/var/log/wgc"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_MAX_BYTES = 10 << 20      # the daemon log is rotated at 10 MiB ...
LOG_BACKUPS = 2               # ... keeping NAME.log.1 and NAME.log.2: at most ~30 MiB in all


def pid_path(name: str) -> str:
    return os.path.join(os.environ.get("WGC_PID_DIR") or DEFAULT_PID_DIR, f"{name}.pid")


def log_path(name: str) -> str:
    return os.path.join(os.environ.get("WGC_LOG_DIR") or DEFAULT_LOG_DIR, f"{name}.log")


class PidFile:
    """An flock-held pid file; `acquire()` raises UsageError if a live daemon holds it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = pid_path(name)
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UsageError(f"cannot create pid file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise UsageError(f"{self.name} is already up (pid {pid or '?'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def claim(self) -> None:
        """The lock passed to this process (a fork): write our pid."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def detach(self) -> None:
        """Close our descriptor only: the lock stays with the process we forked."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


class DaemonLogHandler(logging.handlers.RotatingFileHandler):
    """The daemon's log file (mode 0640), rotated at `max_bytes`; after each rotation the descriptors in
    `follow` (stdout, stderr) are pointed at the new file."""

    def __init__(self, path: str, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS,
                 follow: tuple[int, ...] = (1, 2)) -> None:
        self.follow = follow
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._redirect()

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def doRollover(self) -> None:
        super().doRollover()
        self._redirect()

    def _redirect(self) -> None:
        if self.stream is not None:
            self.stream.flush()
            for fd in self.follow:
                os.dup2(self.stream.fileno(), fd)


def running_pid(name: str) -> int | None:
    """The pid of the live daemon for name (its pid file is locked), else None."""
    try:
        fd = os.open(pid_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        return None  # nobody holds it: stale
    finally:
        os.close(fd)


def interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


# ---- hooks ----

async def run_hooks(kind: str, commands: tuple[str, ...], name: str, *, check: bool) -> None:
    for cmd in commands:
        line = cmd.replace("%i", name)
        log.info("[#] %s: %s", kind, line)
        proc = await asyncio.create_subprocess_exec("bash", "-c", line, stdin=asyncio.subprocess.DEVNULL)
        rc = await proc.wait()
        if rc != 0:
            if check:
                raise UsageError(f"{kind} command failed with exit code {rc}: {line}")
            log.warning("%s command failed with exit code %d: %s", kind, rc, line)


# ---- the process ----

def _quiet_libraries() -> None:
    """Libraries' debug chatter (every netlink message) would drown wgc's own -v output."""
    for name in ("pyroute2", "websockets", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)



def _serve_function() -> Callable[..., Any]:
    try:
        from .runner import serve
    except ImportError as e:  # pragma: no cover - only while the runner is missing
        raise UsageError(f"the WireGuard runner is not available: {e}") from None
    return serve


async def _main(config: InterfaceConfig, on_ready: Callable[[], None], serve_kwargs: dict,
                serve: Callable[..., Any] | None = None) -> None:
    serve = serve or _serve_function()
    params = inspect.signature(serve).parameters
    unsupported = [k for k in serve_kwargs if k not in params]
    if unsupported:
        raise UsageError(f"this build of wgc does not support {', '.join('--' + k for k in unsupported)} yet")
    loop = asyncio.get_running_loop()
    await run_hooks("PreUp", config.pre_up, config.name, check=True)
    stopping = asyncio.Event()
    ready = False

    def ready_cb() -> None:
        nonlocal ready
        ready = True
        on_ready()

    task = asyncio.ensure_future(serve(config, on_ready=ready_cb, **serve_kwargs))

    def on_signal(signum: int) -> None:
        log.info("%s: got %s, shutting down", config.name, signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, config.name, serve_kwargs.get("derpmap_source"))
    try:
        waiter = asyncio.ensure_future(stopping.wait())
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            task.result()          # start failure: raises the serve() error
            if not ready:
                raise UsageError("the interface stopped unexpectedly")
            return                 # it ended by itself once up (a userspace device whose link was deleted)
        if ready:
            await run_hooks("PreDown", config.pre_down, config.name, check=False)
            if config.save_config:
                await asyncio.to_thread(_save_config, config)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        if ready:
            await run_hooks("PostDown", config.post_down, config.name, check=False)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        if not task.done():
            task.cancel()


def _on_sighup(name: str, derpmap_source: Any) -> None:
    """SIGHUP reloads the DERP map at once (and never ends the daemon, as its default action would)."""
    if derpmap_source is None:
        log.info("%s: got SIGHUP: nothing to reload (no --derpmap)", name)
        return
    log.info("%s: got SIGHUP: reloading the DERP map", name)
    derpmap_source.request_refresh()


def _cleanup_stale(name: str) -> list[str]:
    """Undo host changes (DNS, policy rules) a wgc of this name left when it died; we hold its pid lock."""
    from .hostsetup import cleanup_stale
    return cleanup_stale(name)


def _save_config(config: InterfaceConfig) -> None:
    from . import hoststate, saveconf
    try:
        saveconf.save_running(config.name, config.path, auto_fwmark=hoststate.auto_fwmark(config.name))
        log.info("%s: SaveConfig: running configuration written to %s", config.name, config.path)
    except UsageError as e:
        log.warning("%s: SaveConfig failed: %s", config.name, e)


def _run_loop(config: InterfaceConfig, on_ready: Callable[[], None], serve_kwargs: dict,
              serve: Callable[..., Any] | None = None) -> None:
    """Run serve() on uvloop when it is there: its add_reader dispatch made the tunnel ~20 % faster
    in a side-by-side iperf3 run (see README); the stock loop otherwise, or with WGC_ASYNCIO_LOOP=1."""
    if os.environ.get("WGC_ASYNCIO_LOOP") != "1":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(_main(config, on_ready, serve_kwargs, serve))
            return
    asyncio.run(_main(config, on_ready, serve_kwargs, serve))


_background: set[asyncio.Future] = set()


def _ready_with_post_up(config: InterfaceConfig, notify: Callable[[], None]) -> Callable[[], None]:
    def on_ready() -> None:
        log.info("%s is up", config.name)
        if config.post_up:
            fut = asyncio.ensure_future(run_hooks("PostUp", config.post_up, config.name, check=False))
            _background.add(fut)
            fut.add_done_callback(_background.discard)
        notify()
    return on_ready


def run_foreground(config: InterfaceConfig, serve_kwargs: dict, *, verbose: bool = False,
                   serve: Callable[..., Any] | None = None) -> None:
    """Run in this process until SIGTERM/SIGINT; errors raise UsageError. `serve`: instead of the
    runner's (the wireguard-go-style device, userspace.py)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    _quiet_libraries()
    pidfile = PidFile(config.name)
    pidfile.acquire()
    try:
        _cleanup_stale(config.name)
        _run_loop(config, _ready_with_post_up(config, lambda: None), serve_kwargs, serve)
    finally:
        pidfile.release()


def run_daemon(config: InterfaceConfig, serve_kwargs: dict, *, verbose: bool = False,
               serve: Callable[..., Any] | None = None) -> int:
    """Fork a daemon; in the parent wait for "ready" or its error. Returns the daemon's pid."""
    pidfile = PidFile(config.name)
    pidfile.acquire()   # here, not in the daemon: "already up" is this process's error, not the log's
    logfile = os.path.abspath(log_path(config.name))   # the daemon changes to /
    try:
        os.makedirs(os.path.dirname(logfile), mode=0o755, exist_ok=True)
        os.close(os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
    except OSError as e:
        pidfile.release()
        raise UsageError(f"cannot open log file {logfile}: {e.strerror}") from None
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    first = os.fork()
    if first:
        os.close(wfd)
        pidfile.detach()
        os.waitpid(first, 0)
        return _wait_ready(rfd, config.name, logfile)
    # first child
    os.close(rfd)
    os.setsid()
    if os.fork():
        os._exit(0)
    _daemon_child(config, serve_kwargs, wfd, logfile, pidfile, verbose, serve)
    os._exit(0)  # pragma: no cover - _daemon_child exits


def _wait_ready(rfd: int, name: str, logfile: str) -> int:
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    with os.fdopen(rfd, "rb", buffering=0) as pipe:
        while b"\n" not in data and time.monotonic() < deadline:
            r, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\n", 1)[0].decode(errors="replace")
    if line.startswith("ready "):
        return int(line.split()[1])
    if line.startswith("error "):
        raise UsageError(line[6:])
    if not data and time.monotonic() >= deadline:
        raise UsageError(f"{name} did not come up within {READY_TIMEOUT:.0f} s; see {logfile}")
    raise UsageError(f"the {name} daemon exited during start; see {logfile}")


def _daemon_child(config: InterfaceConfig, serve_kwargs: dict, wfd: int, logfile: str, pidfile: PidFile,
                  verbose: bool, serve: Callable[..., Any] | None = None) -> None:
    code = 0
    try:
        pidfile.claim()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.chdir("/")
        _quiet_libraries()
        handler = DaemonLogHandler(logfile)   # also points stdout and stderr at the log
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)

        def notify(message: str) -> None:
            nonlocal wfd
            if wfd >= 0:
                try:
                    os.write(wfd, message.encode() + b"\n")
                except OSError:
                    pass
                os.close(wfd)
                wfd = -1

        try:
            try:
                _cleanup_stale(config.name)
                _run_loop(config, _ready_with_post_up(config, lambda: notify(f"ready {os.getpid()}")), serve_kwargs,
                          serve)
            finally:
                pidfile.release()
        except UsageError as e:
            log.error("%s", e)
            notify(f"error {e}")
            code = 1
        except BaseException as e:
            log.exception("wgc daemon failed")
            notify(f"error internal error: {type(e).__name__}: {e}")
            code = 1
        log.info("%s: daemon exits", config.name)
    finally:
        logging.shutdown()
        os._exit(code)


def stop(name: str, timeout: float = STOP_TIMEOUT) -> int:
    """Signal the daemon of name and wait until it, its socket and its interface are gone; returns its pid."""
    pid = running_pid(name)
    if pid is None:
        if _cleanup_stale(name):  # a daemon died without undoing them: `down` still leaves the host clean
            return 0
        raise UsageError(f"{name} is not up (no running wgc daemon holds {pid_path(name)})")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise UsageError(f"not allowed to stop {name} (pid {pid}): run as root") from None
    deadline = time.monotonic() + timeout
    path = socket_path(name)
    while time.monotonic() < deadline:
        if running_pid(name) is None and not interface_exists(name):
            if os.path.lexists(path) and not socket_is_live(path):
                os.unlink(path)  # the daemon died without removing it
            if not os.path.lexists(path):
                _cleanup_stale(name)   # nothing left unless the daemon was killed during its teardown
                return pid
        time.sleep(0.05)
    raise UsageError(f"{name} (pid {pid}) did not stop within {timeout:.0f} s")


