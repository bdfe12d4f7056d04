"""The SSH proxy as a part of the running gateway: ``add_ssh(gateway)``.

Called by ``service.make_service`` when CONNECT_SSH_ENABLED=true. It loads the
host key, sets up users' keys (:mod:`studios_gateway.ssh.user_keys`: kept by the
session store; with the in-memory store also in the storage root's keys file,
with Redis that file is imported once; plus the Platform's keys when
PLATFORM_URL is set), and joins the Conch server
(:mod:`studios_gateway.ssh.server`) to the gateway's collaborators:

- streams to studios come from ``gateway.dialer.dial(sid, STREAM_SSH)``;
- who may log in is ``gateway.auth.authorizer.check`` (the login rules), and
  live connections are registered with ``authorizer.track`` so revocation
  closes them; each is also tracked with the key it logged in with
  (:mod:`studios_gateway.ssh.key_watch`), so removing that key closes it;
- the tunnel table tells every binding studio the host key's fingerprint (the
  bind reply's ``ssh_host_key``), which is the only login the studio accepts;
- ``/api/users/{user}/keys`` is mounted into the management API;
- the listener on CONNECT_SSH_ADDR is bound with the others (a port in use
  fails the start); a drain waits for open connections, a stop closes them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.registry.base import SessionRecord
from studios_gateway.ssh.api import UserKeysResource
from studios_gateway.ssh.key_watch import KeyWatch
from studios_gateway.ssh.keys import HostKeyError, fingerprint, load_host_key
from studios_gateway.ssh.platform_keys import PlatformKeys
from studios_gateway.ssh.server import GatewaySSHFactory, SSHSettings
from studios_gateway.ssh.user_keys import FileImport, StoreUserKeys, keep_in_file

__all__ = ["add_ssh"]

log = Logger(namespace="studios_gateway.ssh")


def settings_from(config: Any) -> SSHSettings:
    return SSHSettings(max_connections=config.ssh_max_connections,
                       max_conn_channels=config.ssh_max_conn_channels,
                       handshake_timeout=config.ssh_handshake_timeout)


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
            return f"{user} is not allowed on session {record.id} ({decision.reason})"

        return authorizer.check(record.id, user).addCallback(decided)

    return authorize


def make_platform_keys(gateway: Any) -> PlatformKeys | None:
    """The Platform's SSH key call when PLATFORM_URL is set, with the credentials of the
    gateway's OIDC client (as the studio access call; docs/login.md)."""
    auth = gateway.auth
    url = auth.settings.platform_url
    if not url:
        return None
    rp = auth.rp

    def credentials() -> tuple[str, str] | None:
        client = rp.client if rp is not None else None
        return (client.client_id, client.client_secret) if client and client.client_secret \
            else None

    return PlatformKeys(url, credentials, reactor=gateway.reactor, ttl=auth.settings.cache_ttl,
                        timeout=min(auth.settings.timeout, 5.0))


def add_ssh(gateway: Any) -> GatewaySSHFactory:
    """Add the SSH proxy (listener, component, admin API) to `gateway`."""
    from studios_gateway.component import Component, StartError, endpoint_for

    config = gateway.config
    try:
        host_key = load_host_key(config.ssh_key_path, config.ssh_key_value, config.storage_root)
    except HostKeyError as e:
        raise StartError(str(e)) from None
    store = gateway.store
    inner = getattr(store, "inner", store)
    keys_import: FileImport | None = None
    if hasattr(inner, "all_user_keys"):  # one node, in memory: the file keeps them
        keep_in_file(inner, config.storage_root)
    else:
        keys_import = FileImport(store, config.storage_root, gateway.reactor)
    platform = make_platform_keys(gateway)
    user_keys = StoreUserKeys(store, platform)
    authorizer = gateway.auth.authorizer
    key_watch = KeyWatch(store, platform, clock=gateway.reactor, ttl=config.local_cache_ttl)
    factory = GatewaySSHFactory(
        host_key=host_key, user_keys=user_keys, store=store,
        dial=make_dial(gateway.dialer), authorize=make_authorize(authorizer),
        settings=settings_from(config), clock=gateway.reactor, track=authorizer.track,
        watch_keys=key_watch.track)
    fp = fingerprint(host_key)
    gateway.tunnel_table.ssh_host_key = fp
    log.info("SSH: host key {type} {fp}", type=host_key.sshType().decode(), fp=fp)
    host, port = config.ssh_addr
    gateway.add_listener("ssh", "CONNECT_SSH_ADDR", endpoint_for(gateway.reactor, host, port),
                         factory, "the SSH proxy")

    def start() -> None:
        key_watch.start()
        if keys_import is not None:
            keys_import.start()

    def stop() -> Any:
        key_watch.stop()
        factory.disconnect_all("the gateway is shutting down")
        if keys_import is not None:
            keys_import.stop()
        return platform.stop() if platform is not None else None

    gateway.add_component(Component("SSH proxy", start=start, drain=factory.when_idle,
                                    stop=stop))
    gateway.mount_api(b"users", UserKeysResource(store))
    gateway.ssh_factory = factory
    return factory
