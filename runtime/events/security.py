"""CURVE keys and the ZAP allow-list for the publisher, replay and control sockets.

Key files use the ZeroMQ certificate format (`public-key = "..."`, `secret-key = "..."`), so
pyzmq's and czmq's tools read them: `NAME.key` holds the public key, `NAME.key_secret` both keys
and is created with mode 0600. Secret keys are never logged or printed.

`CurveServer` fails closed where ZeroMQ fails open:
- it loads every `*.key` file of `authorized_keys_dir` itself and refuses to start unless the
  number of keys loaded equals the number of files (pyzmq would only log an unreadable folder);
- it starts pyzmq's `ThreadAuthenticator` and checks that a ZAP handler really answers in the
  context (without one, libzmq lets every CURVE client in), and sets `ZAP_ENFORCE_DOMAIN` on each
  server socket so a missing handler rejects connections instead of accepting them.

Revocation: ZAP is asked only at handshake, so `recheck()` (called every `recheck_s` by the
publisher's maintenance thread) re-reads the folder, and when a key has gone it tells each
registered listener to reset its sockets (unbind and bind again). Every client must then handshake
again; a revoked one is refused, the others reconnect by themselves within a few hundred ms (and
subscribers fill the gap from replay).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.errors import ConfigError

if TYPE_CHECKING:
    import zmq

log = logging.getLogger(__name__)

ZAP_DOMAIN = "loomsight"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
Z85_KEY_LEN = 40


def _parse_cert(path: Path) -> tuple[bytes | None, bytes | None]:
    public = secret = None
    for raw in path.read_bytes().splitlines():
        line = raw.strip()
        if line.startswith(b"#"):
            continue
        for name in (b"public-key", b"secret-key"):
            if line.startswith(name) and b"=" in line:
                value = line.split(b"=", 1)[1].strip(b" \t'\"")
                if name == b"public-key":
                    public = value
                else:
                    secret = value
    return public, secret


def _check_z85(value: bytes | None, what: str, path: Path) -> bytes:
    from zmq.utils import z85

    if value is None:
        raise ConfigError(f"{path}: no {what} in this file")
    if len(value) != Z85_KEY_LEN:
        raise ConfigError(f"{path}: {what} is {len(value)} characters, a Z85 CURVE key has {Z85_KEY_LEN}")
    try:
        if len(z85.decode(value)) != 32:
            raise ValueError("not 32 bytes")
    except Exception:
        raise ConfigError(f"{path}: {what} is not valid Z85") from None
    return value


def read_public_key(path: Path | str) -> bytes:
    """The Z85 public key of a `.key` (or `.key_secret`) certificate file."""
    path = Path(path)
    try:
        public, _ = _parse_cert(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the key file ({exc.strerror})") from None
    return _check_z85(public, "public-key", path)


def read_secret_key(path: Path | str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a `.key_secret` file that only its owner can read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        public, secret = _parse_cert(path)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: secret key file not found; create a key pair with `loomsight keys --out DIR --name NAME`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the secret key file ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: permissions {stat.S_IMODE(mode):04o} let other users read a secret key; run chmod 600 {path}"
        )
    if secret is None:
        raise ConfigError(
            f"{path}: no secret-key in this file (is it the public .key file? use NAME{SECRET_SUFFIX})"
        )
    return _check_z85(public, "public-key", path), _check_z85(secret, "secret-key", path)


def generate_key_files(out_dir: Path | str, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write `NAME.key` (public, 0644) and `NAME.key_secret` (0600) into out_dir; returns both paths."""
    import zmq

    if not name or "/" in name or name.startswith(".") or os.sep in name:
        raise ConfigError(f"--name {name!r}: use a plain file name such as 'server' or 'plc-1'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_path = out / f"{name}{PUBLIC_SUFFIX}"
    secret_path = out / f"{name}{SECRET_SUFFIX}"
    for p in (public_path, secret_path):
        if p.exists() and not force:
            raise ConfigError(f"{p} already exists; choose another --name or pass --force to replace it")
    public, secret = zmq.curve_keypair()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    head = f"#   Generated on {stamp} by loomsight keys\n"
    pub_text = (
        f"{head}#   ZeroMQ CURVE Public Certificate ({name})\n"
        "#   A subscriber's key: copy it into the publisher's security.authorized_keys_dir to allow it.\n"
        "#   The publisher's own key: give it to subscribers (loomsight subscribe --curve-server-key);\n"
        "#   never put it in authorized_keys_dir, which holds the clients' keys only.\n"
        f'\nmetadata\ncurve\n    public-key = "{public.decode()}"\n'
    )
    sec_text = (
        f"{head}#   ZeroMQ CURVE **Secret** Certificate ({name})\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS "
        f'nor change its permissions.\n\nmetadata\ncurve\n    public-key = "{public.decode()}"\n'
        f'    secret-key = "{secret.decode()}"\n'
    )
    _write_file(secret_path, sec_text, 0o600, force)
    _write_file(public_path, pub_text, 0o644, force)
    return public_path, secret_path


def _write_file(path: Path, text: str, mode: int, force: bool) -> None:
    if force and path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ClientCurve:
    """A client's CURVE identity and the server key it trusts."""

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_serverkey = self.server_public_key
        socket.curve_publickey = self.public_key
        socket.curve_secretkey = self.secret_key

    def __repr__(self) -> str:  # never show the secret key
        return f"ClientCurve(server={self.server_public_key.decode()[:8]}…, public={self.public_key.decode()[:8]}…)"


def load_client_curve(server_key_file: Path | str, client_key_file: Path | str) -> ClientCurve:
    """The server's public key file and this client's `.key_secret` file."""
    server_public = read_public_key(server_key_file)
    public, secret = read_secret_key(client_key_file)
    return ClientCurve(server_public_key=server_public, public_key=public, secret_key=secret)


_warned_modes: set[tuple[str, int, int]] = set()
ALLOW_LIST_KEY = "security.authorized_keys_dir"


def mode_problem(path: Path, what: str) -> str | None:
    """Like OpenSSH's StrictModes: why `path` could let another local user change the allow-list
    (writable by group or others, or owned by neither this process's user nor root), else None."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"{what} {path}: cannot stat it ({exc.strerror})"
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        return (
            f"{what} {path} is owned by uid {st.st_uid}, not by this daemon's user (uid {euid}) or root: "
            f"that user could authorise any key; chown it to uid {euid} or root"
        )
    writers = [w for w, bit in (("its group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit]
    if writers:
        return (
            f"{what} {path} is writable by {' and '.join(writers)} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): another local user could authorise their own key; "
            f"run chmod go-w {path}"
        )
    return None


def parent_problem(folder: Path) -> str | None:
    """Like OpenSSH's StrictModes for the path above the allow-list: a parent folder that another
    local user owns, or may write to, lets them swap the whole folder. A sticky parent owned by us
    or root (such as /tmp) is fine: nobody else may rename what is ours in it."""
    euid = os.geteuid()
    for parent in folder.resolve().parents:
        try:
            st = parent.stat()
        except OSError as exc:
            return f"security.authorized_keys_dir {folder}: cannot stat its parent {parent} ({exc.strerror})"
        if st.st_uid not in (euid, 0):
            return (
                f"security.authorized_keys_dir {folder}: its parent {parent} is owned by uid {st.st_uid}, "
                f"not by this daemon's user (uid {euid}) or root: that user could replace the folder; "
                "move the keys under a folder owned by root or this user"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return (
                f"security.authorized_keys_dir {folder}: its parent {parent} is writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): another local user could replace the folder; "
                f"run chmod go-w {parent}"
            )
    return None


def _checked_mode(path: Path, what: str, strict: bool) -> str | None:
    """The mode problem when `strict` (the caller refuses), else None after a one-time warning."""
    problem = mode_problem(path, what) or (parent_problem(path) if what == ALLOW_LIST_KEY else None)
    if problem is None or strict:
        return problem
    try:
        st = path.stat()
        key = (str(path), st.st_mode, st.st_uid)
    except OSError:
        key = (str(path), -1, -1)
    if key not in _warned_modes:
        _warned_modes.add(key)
        log.warning("%s (accepted because security.strict_modes = false)", problem)
    return None


def load_allow_list(folder: Path, *, strict_modes: bool = True) -> tuple[frozenset[bytes], list[str]]:
    """(keys, problems): every `*.key` file's public key, and a line per file that did not load.

    `strict_modes` (security.strict_modes, on by default): a folder that another local user could
    write to (group/other-writable, or owned by someone other than us or root), or whose parent
    folders another user owns or may write to (sticky ones such as /tmp excepted), is a ConfigError,
    and such a key file is a problem (its key is not accepted); off, both are logged once as
    warnings and accepted.
    """
    if not folder.is_dir():
        raise ConfigError(f"security.authorized_keys_dir {folder}: not a directory")
    problem = _checked_mode(folder, ALLOW_LIST_KEY, strict_modes)
    if problem is not None:
        raise ConfigError(f"{problem} (or set security.strict_modes = false to accept it with a warning)")
    try:
        files = sorted(p for p in folder.iterdir() if p.name.endswith(PUBLIC_SUFFIX))
    except OSError as exc:
        raise ConfigError(f"security.authorized_keys_dir {folder}: cannot list it ({exc.strerror})") from None
    keys: set[bytes] = set()
    problems: list[str] = []
    for path in files:
        problem = _checked_mode(path, "key file", strict_modes)
        if problem is not None:
            problems.append(problem)
            continue
        try:
            keys.add(read_public_key(path))
        except ConfigError as exc:
            problems.append(str(exc))
    if len(keys) + len(problems) != len(files):  # two files with one key: fine, but say so
        log.info("authorized_keys_dir %s: %d files hold %d distinct keys", folder, len(files), len(keys))
    return frozenset(keys), problems


class _AllowList:
    """The credentials provider pyzmq's authenticator calls (from its own thread) at each handshake."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys
        self.allowed = 0
        self.denied = 0
        self._last_logged: dict[bytes, float] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys  # one read of an immutable set: safe across threads
        if ok:
            self.allowed += 1
            return True
        self.denied += 1
        now = time.monotonic()
        if now - self._last_logged.get(key, -1e9) > 60.0:  # a refused client retries; log it once a minute
            self._last_logged[key] = now
            log.warning(
                "CURVE client refused: key %s… is not in the allow-list", key.decode("ascii", "replace")[:8]
            )
        return False


class CurveServer:
    """The server side of CURVE: the server key, the ZAP authenticator and the live allow-list."""

    def __init__(
        self,
        *,
        server_secret_key: Path,
        authorized_keys_dir: Path,
        recheck_s: float,
        strict_modes: bool = True,
    ) -> None:
        self.server_secret_key = Path(server_secret_key)
        self.authorized_keys_dir = Path(authorized_keys_dir)
        self.strict_modes = strict_modes
        self.recheck_s = recheck_s
        self.public_key = b""
        self._secret_key = b""
        self._allow = _AllowList(frozenset())
        self._auth: object | None = None
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.revocations = 0

    @property
    def authorized_keys(self) -> int:
        return len(self._allow.keys)

    def start(self, context: zmq.Context) -> None:
        """Load the keys (all of them or refuse), start the authenticator and prove it answers."""
        import zmq
        from zmq.auth.thread import ThreadAuthenticator

        self.public_key, self._secret_key = read_secret_key(self.server_secret_key)
        keys, problems = load_allow_list(self.authorized_keys_dir, strict_modes=self.strict_modes)
        if problems:
            raise ConfigError(
                f"security.authorized_keys_dir {self.authorized_keys_dir}: {len(problems)} key file(s) did not "
                "load; every configured key must load: " + "; ".join(problems)
            )
        if not keys:
            raise ConfigError(
                f"security.authorized_keys_dir {self.authorized_keys_dir}: no client public keys (*.key); "
                "copy each client's NAME.key made by `loomsight keys` there"
            )
        self._allow = _AllowList(keys)
        auth = ThreadAuthenticator(context, log=logging.getLogger("zmq.auth"))
        try:
            auth.start()
        except zmq.ZMQError as exc:
            auth.stop()  # closes the half-made ZAP socket, which would otherwise block context.term()
            raise ConfigError(
                f"CURVE: cannot start the ZAP authenticator ({exc}); another ZAP handler already runs in this "
                "ZeroMQ context"
            ) from None
        auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self._allow)
        self._auth = auth
        if not auth.is_alive() or not _zap_handler_bound(context):
            self.stop()
            raise ConfigError(
                "CURVE is configured but no ZAP handler answers; refusing to start (fail closed)"
            )
        log.info(
            "CURVE on: server key %s…, %d authorized client key(s) from %s",
            self.public_key.decode()[:8],
            len(keys),
            self.authorized_keys_dir,
        )

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE server that asks our ZAP handler (and fails closed without one)."""
        import zmq

        if self._auth is None:
            raise ConfigError("CurveServer.apply() before start(): the authenticator is not running")
        socket.curve_server = True
        socket.curve_secretkey = self._secret_key
        socket.zap_domain = ZAP_DOMAIN.encode()
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def add_revocation_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` is called (from the maintenance thread) when a key was removed: reset your sockets."""
        with self._lock:
            self._listeners.append(callback)

    def recheck(self) -> bool:
        """Re-read the allow-list. True (and listeners told) when any key was removed."""
        try:
            keys, problems = load_allow_list(self.authorized_keys_dir, strict_modes=self.strict_modes)
        except ConfigError as exc:
            log.error("%s; refusing every CURVE client until it is fixed", exc)
            keys, problems = frozenset(), []
        for problem in problems:
            log.error("allow-list: %s (this key is not accepted)", problem)
        old = self._allow.keys
        if keys == old:
            return False
        self._allow.keys = keys
        removed = old - keys
        if keys - old:
            log.info("allow-list: %d key(s) added", len(keys - old))
        if not removed:
            return False
        self.revocations += len(removed)
        log.warning(
            "allow-list: %d key(s) removed; resetting CURVE sessions so they handshake again", len(removed)
        )
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception:
                log.exception("revocation listener failed")
        return True

    def stats(self) -> dict[str, int]:
        return {
            "authorized_keys": len(self._allow.keys),
            "handshakes_allowed": self._allow.allowed,
            "handshakes_denied": self._allow.denied,
            "revocations": self.revocations,
        }

    def stop(self) -> None:
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()  # type: ignore[attr-defined]


def _zap_handler_bound(context: zmq.Context) -> bool:
    """True when something already listens on the ZAP endpoint of this context."""
    import zmq

    probe = context.socket(zmq.REP)
    probe.linger = 0
    try:
        probe.bind(ZAP_ENDPOINT)
    except zmq.ZMQError as exc:
        return exc.errno == zmq.EADDRINUSE
    else:
        probe.unbind(ZAP_ENDPOINT)
        return False
    finally:
        probe.close()
