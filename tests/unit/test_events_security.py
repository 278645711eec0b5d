"""CURVE keys and the allow-list: key files are private, and a misconfiguration refuses to start."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
import zmq
from zmq.auth.certs import load_certificate

from runtime.errors import ConfigError
from runtime.events.security import (
    CurveServer,
    _zap_handler_bound,
    generate_key_files,
    load_allow_list,
    load_client_curve,
    read_public_key,
    read_secret_key,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_generated_keys_have_private_secret_files_and_load_back(tmp_path: Path) -> None:
    public_path, secret_path = generate_key_files(tmp_path / "keys", "plc-1")
    assert (public_path.name, secret_path.name) == ("plc-1.key", "plc-1.key_secret")
    assert _mode(secret_path) == 0o600
    assert _mode(public_path) == 0o644
    public = read_public_key(public_path)
    pub2, secret = read_secret_key(secret_path)
    assert public == pub2 and len(public) == 40 and len(secret) == 40
    assert zmq.curve_public(secret) == public  # the pair belongs together
    assert b"secret" not in public_path.read_bytes().split(b"metadata")[1]  # no secret in the public file
    # pyzmq's own loader reads our files
    assert load_certificate(secret_path) == (public, secret)


def test_existing_key_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    first, _ = generate_key_files(tmp_path, "server")
    with pytest.raises(ConfigError, match="already exists"):
        generate_key_files(tmp_path, "server")
    again, _ = generate_key_files(tmp_path, "server", force=True)
    assert read_public_key(again) != b"" and again == first
    with pytest.raises(ConfigError, match="plain file name"):
        generate_key_files(tmp_path, "../evil")


def test_secret_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    _, secret_path = generate_key_files(tmp_path, "server")
    secret_path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret_key(secret_path)


def test_public_file_given_as_secret_key_is_explained(tmp_path: Path) -> None:
    public_path, _ = generate_key_files(tmp_path, "server")
    public_path.chmod(0o600)
    with pytest.raises(ConfigError, match="no secret-key"):
        read_secret_key(public_path)
    with pytest.raises(ConfigError, match="not found"):
        read_secret_key(tmp_path / "missing.key_secret")


def test_client_curve_never_shows_its_secret(tmp_path: Path) -> None:
    server_pub, _ = generate_key_files(tmp_path, "server")
    _, client_secret = generate_key_files(tmp_path, "client")
    curve = load_client_curve(server_pub, client_secret)
    assert curve.secret_key.decode() not in repr(curve)


def test_allow_list_counts_every_file_and_reports_bad_ones(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for name in ("a", "b"):
        public_path, _ = generate_key_files(tmp_path / "keys", name)
        (allowed / public_path.name).write_bytes(public_path.read_bytes())
    (allowed / "broken.key").write_text('public-key = "too-short"\n')
    (allowed / "dir.key").mkdir()
    (allowed / "notes.txt").write_text("ignored: not a .key file")
    keys, problems = load_allow_list(allowed)
    assert len(keys) == 2
    assert len(problems) == 2
    assert any("broken.key" in p and "40" in p for p in problems)
    assert any("dir.key" in p for p in problems)


def _curve_setup(tmp_path: Path) -> tuple[Path, Path]:
    _, server_secret = generate_key_files(tmp_path / "server", "server")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    public_path, _ = generate_key_files(tmp_path / "clients", "plc")
    (allowed / "plc.key").write_bytes(public_path.read_bytes())
    return server_secret, allowed


def _start(secret: Path, allowed: Path, ctx: zmq.Context) -> CurveServer:
    server = CurveServer(server_secret_key=secret, authorized_keys_dir=allowed, recheck_s=1.0)
    server.start(ctx)
    return server


def test_curve_server_refuses_to_start_on_any_key_problem(tmp_path: Path) -> None:
    secret, allowed = _curve_setup(tmp_path)
    ctx = zmq.Context()
    try:
        with pytest.raises(ConfigError, match="not a directory"):
            _start(secret, tmp_path / "nowhere", ctx)
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(ConfigError, match="no client public keys"):
            _start(secret, empty, ctx)
        (allowed / "bad.key").write_text("garbage\n")
        with pytest.raises(ConfigError, match=r"1 key file\(s\) did not load.*bad.key"):
            _start(secret, allowed, ctx)
        (allowed / "bad.key").unlink()
        secret.chmod(0o640)
        with pytest.raises(ConfigError, match="chmod 600"):
            _start(secret, allowed, ctx)
        secret.chmod(0o600)
        server = _start(secret, allowed, ctx)
        assert server.authorized_keys == 1
        assert _zap_handler_bound(ctx)
        # a second authenticator in the same context is a clear error, not a silent second handler
        with pytest.raises(ConfigError, match="another ZAP handler"):
            _start(secret, allowed, ctx)
        server.stop()
        deadline = time.monotonic() + 2.0  # the ZAP socket is closed asynchronously by libzmq
        while _zap_handler_bound(ctx):
            assert time.monotonic() < deadline, "the ZAP handler is still bound after stop()"
            time.sleep(0.02)
    finally:
        ctx.destroy(linger=0)


def test_recheck_reports_removals_only_and_tells_listeners(tmp_path: Path) -> None:
    secret, allowed = _curve_setup(tmp_path)
    ctx = zmq.Context()
    server = _start(secret, allowed, ctx)
    calls: list[int] = []
    server.add_revocation_listener(lambda: calls.append(1))
    try:
        assert server.recheck() is False
        extra, _ = generate_key_files(tmp_path / "clients", "hmi")
        (allowed / "hmi.key").write_bytes(extra.read_bytes())
        assert server.recheck() is False and server.authorized_keys == 2 and calls == []
        (allowed / "plc.key").unlink()
        assert server.recheck() is True and server.authorized_keys == 1 and calls == [1]
        assert server.stats()["revocations"] == 1
    finally:
        server.stop()
        ctx.destroy(linger=0)


def test_enforced_zap_domain_fails_closed_without_a_handler() -> None:
    """What CurveServer.apply() relies on: with ZAP_ENFORCE_DOMAIN, no handler = no connection."""
    ctx = zmq.Context()
    try:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        results = {}
        for enforce in (0, 1):
            pub = ctx.socket(zmq.PUB)
            pub.linger = 0
            pub.curve_server = True
            pub.curve_secretkey = server_secret
            pub.zap_domain = b"loomsight"
            pub.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, enforce)
            port = pub.bind_to_random_port("tcp://127.0.0.1")
            sub = ctx.socket(zmq.SUB)
            sub.linger = 0
            sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = (
                server_public,
                client_public,
                client_secret,
            )
            sub.subscribe(b"")
            sub.connect(f"tcp://127.0.0.1:{port}")
            got = 0
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                pub.send(b"x")
                if sub.poll(20):
                    sub.recv()
                    got += 1
            results[enforce] = got
            pub.close()
            sub.close()
        assert results[0] > 0, "without enforcement libzmq lets a CURVE client in with no ZAP handler"
        assert results[1] == 0
    finally:
        ctx.destroy(linger=0)


# ----------------------------------------------------------------------------- issue 17: StrictModes
def _allowed_dir(tmp_path: Path) -> Path:
    allowed = tmp_path / "allowed"
    allowed.mkdir(mode=0o700)
    allowed.chmod(0o700)
    public_path, _ = generate_key_files(tmp_path / "keys", "plc")
    (allowed / "plc.key").write_bytes(public_path.read_bytes())
    (allowed / "plc.key").chmod(0o644)
    return allowed


def test_a_folder_any_local_user_can_write_is_refused_unless_strict_modes_is_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    allowed = _allowed_dir(tmp_path)
    allowed.chmod(0o777)
    with pytest.raises(
        ConfigError, match=r"writable by its group and others \(mode 0777\).*chmod go-w"
    ) as info:
        load_allow_list(allowed)
    assert "security.strict_modes = false" in str(info.value)
    allowed.chmod(0o775)
    with pytest.raises(ConfigError, match=r"writable by its group \(mode 0775\)"):
        load_allow_list(allowed)
    with caplog.at_level("WARNING", logger="runtime.events.security"):
        keys, problems = load_allow_list(allowed, strict_modes=False)
        load_allow_list(allowed, strict_modes=False)  # warned once, not on every recheck
    assert len(keys) == 1 and problems == []
    warnings = [r.getMessage() for r in caplog.records if "strict_modes = false" in r.getMessage()]
    assert len(warnings) == 1 and "mode 0775" in warnings[0]


def test_a_key_file_others_can_write_is_not_accepted_and_the_server_refuses_to_start(tmp_path: Path) -> None:
    allowed = _allowed_dir(tmp_path)
    (allowed / "plc.key").chmod(0o666)
    keys, problems = load_allow_list(allowed)
    assert keys == frozenset() and len(problems) == 1 and "key file" in problems[0] and "0666" in problems[0]
    _, secret = generate_key_files(tmp_path / "server", "server")
    ctx = zmq.Context()
    try:
        with pytest.raises(ConfigError, match=r"did not load.*writable by its group and others"):
            CurveServer(server_secret_key=secret, authorized_keys_dir=allowed, recheck_s=1.0).start(ctx)
        lenient = CurveServer(
            server_secret_key=secret, authorized_keys_dir=allowed, recheck_s=1.0, strict_modes=False
        )
        lenient.start(ctx)
        assert lenient.authorized_keys == 1
        lenient.stop()
    finally:
        ctx.destroy(linger=0)


def test_a_folder_or_key_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    allowed = _allowed_dir(tmp_path)
    if os.geteuid() == 0:
        os.chown(allowed / "plc.key", 12345, -1)
        owner = 12345
    else:  # as an ordinary user we cannot chown: pretend the daemon runs as someone else
        owner = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
        with pytest.raises(ConfigError, match=rf"owned by uid {owner}, not by this daemon's user"):
            load_allow_list(allowed)
        return
    keys, problems = load_allow_list(allowed)
    assert keys == frozenset() and len(problems) == 1
    assert f"owned by uid {owner}, not by this daemon's user (uid 0) or root" in problems[0]


def test_a_folder_made_writable_after_start_refuses_every_client_at_the_next_recheck(tmp_path: Path) -> None:
    allowed = _allowed_dir(tmp_path)
    _, secret = generate_key_files(tmp_path / "server", "server")
    ctx = zmq.Context()
    try:
        server = CurveServer(server_secret_key=secret, authorized_keys_dir=allowed, recheck_s=1.0)
        server.start(ctx)
        assert server.authorized_keys == 1
        allowed.chmod(0o777)
        assert server.recheck() is True and server.authorized_keys == 0  # fail closed
        server.stop()
    finally:
        ctx.destroy(linger=0)


def test_the_public_key_file_says_where_a_client_key_and_where_the_publishers_key_go(tmp_path: Path) -> None:
    public_path, _ = generate_key_files(tmp_path, "server")
    text = public_path.read_text()
    assert "A subscriber's key: copy it into the publisher's security.authorized_keys_dir" in text
    assert "The publisher's own key: give it to subscribers (loomsight subscribe --curve-server-key)" in text
    assert "to allow this client" not in text


def test_a_parent_folder_others_can_write_is_refused_unless_it_is_sticky(tmp_path: Path) -> None:
    # issue 17.4, the path above the allow-list: whoever may write the parent can swap the folder
    parent = tmp_path / "shared"
    parent.mkdir()
    allowed = _allowed_dir(parent)
    parent.chmod(0o777)
    try:
        with pytest.raises(
            ConfigError, match=rf"its parent {parent} is writable by group or others \(mode 0777\)"
        ):
            load_allow_list(allowed)
        keys, _ = load_allow_list(allowed, strict_modes=False)  # warned, accepted
        assert len(keys) == 1
        parent.chmod(0o1777)  # sticky, like /tmp: nobody else may rename our folder in it
        keys, problems = load_allow_list(allowed)
        assert len(keys) == 1 and problems == []
    finally:
        parent.chmod(0o755)
