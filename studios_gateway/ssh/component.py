"""The SSH proxy as a part of the running gateway: ``build_ssh(...)``.

Called by ``service.make_service`` when CONNECT_SSH_ENABLED=true, with the host
key the service loaded first (``load_gateway_host_key``; the tunnel table tells
binding studios its fingerprint). It sets up users' keys
(:mod:`studios_gateway.ssh.user_keys`: kept by the session store; with the
in-memory store also in the storage root's keys file, with Redis that file is
imported once; plus the Platform's keys when PLATFORM_URL is set), and joins the Conch server
(:mod:`studios_gateway.ssh.server`) to the gateway's collaborators:

- streams to studios come from ``dialer.dial(sid, STREAM_SSH)``;
- who may log in is ``auth.authorizer.check`` (the login rules), and
  live connections are registered with ``authorizer.track`` so revocation
  closes them; each is also tracked with the key it logged in with
  (:mod:`studios_gateway.ssh.key_watch`), so removing that key closes it; and
  registry changes are followed, so turning a session's ``ssh_enabled`` off
  closes its connections;
- ``/api/users/{user}/keys`` is returned for the management API;
- the listener on CONNECT_SSH_ADDR is bound with the others (a port in use
  fails the start); a drain waits for open connections, a stop closes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.conch.ssh.keys import Key
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.auth.authorizer import NOT_ALLOWED
from studios_gateway.auth.login import Auth, platform_credentials
from studios_gateway.component import Component, Part, StartError, endpoint_for
from studios_gateway.config import Config
from studios_gateway.registry.base import SessionRecord, SessionStore, UserKeyStore
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.ssh.api import UserKeysResource
from studios_gateway.ssh.key_watch import KeyWatch
from studios_gateway.ssh.keys import (
    GENERATED_NAME,
    HostKeyError,
    fingerprint,
    kept_host_key,
    load_host_key,
)
from studios_gateway.ssh.platform_keys import PlatformKeys
from studios_gateway.ssh.server import GatewaySSHFactory, SSHSettings
from studios_gateway.ssh.user_keys import FileImport, StoreUserKeys, keep_in_file
from studios_gateway.traffic.observer import Traffic
from studios_gateway.tunnel.dialer import Dialer

__all__ = ["SSHProxy", "build_ssh", "check_host_key", "load_gateway_host_key"]

log = Logger(namespace="studios_gateway.ssh")


def settings_from(config: Any) -> SSHSettings:
    return SSHSettings(max_connections=config.ssh_max_connections,
                       max_conn_channels=config.ssh_max_conn_channels,
                       handshake_timeout=config.ssh_handshake_timeout,
                       max_startups=config.ssh_max_startups,
                       kex_timeout=config.ssh_kex_timeout,
                       client_timeout=config.ssh_client_timeout,
                       platform_url=getattr(config, "platform_url", None))


def make_dial(dialer: Any) -> Any:
    """The SSH server's ``dial``: a tunnel stream of kind ``S``, or False when the studio
    cannot be reached."""
    from studios_gateway.tunnel.dialer import StudioUnreachable
    from studios_gateway.wire.kinds import STREAM_SSH

    def dial(session_id: str, proto: IProtocol) -> Deferred[bool]:
        def got(stream: Any) -> bool:
            stream.attach(proto)
            return True

        def unreachable(f: Failure) -> bool:
            f.trap(StudioUnreachable)
            return False

        return dialer.dial(session_id, STREAM_SSH).addCallbacks(got, unreachable)

    return dial


def make_authorize(authorizer: Any) -> Any:
    """The login rules' decision, worded for an SSH user."""

    def authorize(user: str, record: SessionRecord) -> Deferred[bool | str]:
        def decided(decision: Any) -> bool | str:
            if decision.allowed:
                return True
            if decision.status == 503:
                return (f"cannot check access to session {record.id} right now "
                        f"({decision.reason}); try again shortly")
            if decision.status == 404:
                return f"there is no session {record.id} (check the session id)"
            base = f"{user} is not allowed on session {record.id}"
            # The login rules' plain "no" adds nothing; another reason (the workspace) does.
            return base if decision.reason == NOT_ALLOWED else f"{base} ({decision.reason})"

        return authorizer.check(record.id, user).addCallback(decided)

    return authorize


def make_platform_keys(auth: Auth, reactor: Any) -> PlatformKeys | None:
    """The Platform's SSH key call when PLATFORM_URL is set, with the credentials of the
    gateway's OIDC client (as the studio access call; docs/login.md)."""
    url = auth.settings.platform_url
    if not url:
        return None
    credentials = platform_credentials(auth.settings, auth.rp)
    return PlatformKeys(url, credentials, reactor=reactor, ttl=auth.settings.cache_ttl,
                        timeout=min(auth.settings.timeout, 5.0))


def load_gateway_host_key(config: Config) -> Key:
    """The gateway's SSH host key (CONNECT_SSH_KEY_PATH / _VALUE_BASE64, else one kept in
    the storage root); a key that cannot be read stops the start with one line."""
    try:
        return load_host_key(config.ssh_key_path, config.ssh_key_value, config.storage_root)
    except HostKeyError as e:
        raise StartError(str(e)) from None


def check_host_key(config: Config) -> str | None:
    """Why the start would refuse the SSH host key CONNECT_SSH_KEY_PATH or
    _VALUE_BASE64 names (one line, in the start's words), or None. For ``studios-gateway
    check-config``, which said 'configuration OK' for a certificate, a public key or a key
    with a passphrase there; a key to be generated is not made here (it leaves nothing
    behind); one generated before, kept under the storage root, is read when this user
    may (a damaged one ended the start)."""
    if not config.ssh_enabled:
        return None
    try:
        if config.ssh_key_path or config.ssh_key_value:
            load_host_key(config.ssh_key_path, config.ssh_key_value, config.storage_root)
            return None
        target = Path(config.storage_root) / "ssh" / GENERATED_NAME
        try:
            data = target.read_bytes()
        except OSError:  # none yet, or under a storage root this user may not look into
            return None
        kept_host_key(target, data)
    except HostKeyError as e:
        return str(e)
    return None


@dataclass
class SSHProxy:
    factory: GatewaySSHFactory
    part: Part
    api: dict[bytes, Any]  # resources for the management API, by name under /api/


def build_ssh(config: Config, reactor: Any, store: SessionStore, dialer: Dialer, auth: Auth,
              host_key: Key, traffic: Traffic | None = None,
              local: MemoryStore | None = None,
              fresh: UserKeyStore | None = None) -> SSHProxy:
    """The SSH proxy: its listener and lifecycle (a Part), and /api/users for the admin API.
    `local`: the embedded registry of a single node (users' keys then live in a file);
    with a shared registry the file is imported once. `fresh`: the registry behind the
    cache, which the periodic key re-check reads."""
    keys_import: FileImport | None = None
    if local is not None:  # one node, in memory: the file keeps them
        keep_in_file(local, config.storage_root)
    else:
        keys_import = FileImport(store, config.storage_root, reactor)
    platform = make_platform_keys(auth, reactor)
    if platform is not None and traffic is not None:
        platform.on_call = traffic.metrics.platform_call
    user_keys = StoreUserKeys(store, platform)
    authorizer = auth.authorizer
    key_watch = KeyWatch(store, platform, clock=reactor, ttl=config.local_cache_ttl,
                         fresh=fresh)
    factory = GatewaySSHFactory(
        host_key=host_key, user_keys=user_keys, store=store,
        dial=make_dial(dialer), authorize=make_authorize(authorizer),
        settings=settings_from(config), clock=reactor, track=authorizer.track,
        watch_keys=key_watch.track, traffic=traffic)
    log.info("SSH: host key {type} {fp}", type=host_key.sshType().decode(),
             fp=fingerprint(host_key))
    part = Part()
    unsubscribe: list[Any] = []
    host, port = config.ssh_addr
    part.listen("ssh", "CONNECT_SSH_ADDR", endpoint_for(reactor, host, port), factory,
                "the SSH proxy")

    def start() -> None:
        key_watch.start()
        if not unsubscribe:  # SSH turned off for a session closes its connections
            unsubscribe.append(store.subscribe(factory.session_changed))
        if keys_import is not None:
            keys_import.start()

    def stop() -> Any:
        key_watch.stop()
        while unsubscribe:
            unsubscribe.pop()()
        factory.disconnect_all("the gateway is shutting down")
        if keys_import is not None:
            keys_import.stop()
        return platform.stop() if platform is not None else None

    part.components.append(Component("SSH proxy", start=start, drain=factory.when_idle,
                                     stop=stop))
    return SSHProxy(factory, part, {b"users": UserKeysResource(store)})
