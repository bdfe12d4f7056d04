"""Users' SSH keys as the gateway keeps them: in the session registry, plus the Platform's.

:class:`StoreUserKeys` answers "may this user log in with this key?" from the
keys registered through the admin API (kept by the session store, so every
node that shares the Redis sees a change at once) and, when a Platform is
configured, from the Platform's own list of the user's keys
(:mod:`studios_gateway.ssh.platform_keys`). Registered keys are looked at
first, so a Platform that does not answer only matters for keys the gateway
does not know.

Where the registered keys live on disk:

- with the in-memory registry (one node, no Redis) they stay in
  ``<storage root>/ssh/user_keys.json`` as before: :func:`keep_in_file` loads
  that file into the store and writes it again after every change;
- with Redis, :class:`FileImport` copies such a file (left by an older
  version) into Redis once, merging with what is there, and renames it to
  ``user_keys.json.imported``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.conch.ssh.keys import Key
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.registry.base import BadUserKeys, StoreUnavailable, UserKeyStore
from studios_gateway.ssh.keys import (
    KeysUnavailable,
    key_blobs,
    key_file_path,
    parse_public_keys,
    read_key_file,
    write_key_file,
)

__all__ = ["FileImport", "StoreUserKeys", "keep_in_file"]

log = Logger(namespace="studios_gateway.ssh.user_keys")

#: Seconds between attempts to import the keys file while the registry is unavailable.
IMPORT_RETRY = 2.0


class StoreUserKeys:
    """The SSH server's UserKeys: registered keys from `store`, then `platform`'s."""

    def __init__(self, store: UserKeyStore, platform: Any = None):
        self.store = store
        self.platform = platform

    async def accepts(self, user: str, key: Key) -> bool:
        problems = []
        try:
            lines = await self.store.get_user_keys(user)
        except StoreUnavailable as e:
            log.warn("SSH: cannot read the registered keys of {user}: {why}", user=user,
                     why=e.reason)
            lines = []
            problems.append("the gateway's key registry is unavailable")
        if key.blob() in key_blobs(lines):
            return True
        if self.platform is not None:
            try:
                if await self.platform.accepts(user, key):
                    return True
            except KeysUnavailable as e:
                problems.append(str(e))
        if problems:
            raise KeysUnavailable(f"cannot check {user}'s SSH keys right now ("
                                  + "; ".join(problems) + "); try again shortly")
        return False


def keep_in_file(store: Any, storage_root: str) -> Path:
    """One node without Redis: load the keys file into the in-memory `store` and save it
    after every change of a user's keys. Returns the file's path."""
    path = key_file_path(storage_root)
    for user, lines in read_key_file(path).items():
        try:
            good = parse_public_keys("\n".join(lines))
            store.set_user_keys(user, good).addErrback(
                lambda f, u=user: log.error("SSH keys of {user} in {path} not loaded: {why}",
                                            user=u, path=str(path), why=f.getErrorMessage()))
        except ValueError as e:
            log.error("SSH keys of {user} in {path} not loaded: {why}", user=user,
                      path=str(path), why=str(e))

    def changed(_user: str | None) -> None:
        try:
            write_key_file(path, store.all_user_keys())
        except OSError as e:
            log.error("cannot save users' SSH keys to {path}: {why}", path=str(path),
                      why=e.strerror or str(e))

    store.subscribe_user_keys(changed)
    return path


class FileImport:
    """Copy an older version's ``user_keys.json`` into the (Redis) registry, once.

    Each user's keys are merged with what the registry holds (so files from
    several nodes add up and nothing is lost); then the file is renamed to
    ``user_keys.json.imported`` so a restart does not bring back keys deleted
    since. While the registry is unavailable it tries again every IMPORT_RETRY
    seconds. `done` fires with the number of users imported (0: no file)."""

    def __init__(self, store: UserKeyStore, storage_root: str, clock: Any):
        self.store = store
        self.path = key_file_path(storage_root)
        self.clock = clock
        self.done: defer.Deferred[int] = defer.Deferred()
        self._retry: Any = None
        self._stopped = False

    def start(self) -> None:
        if not self.path.exists():
            self.done.callback(0)
            return
        self._attempt()

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

    def _attempt(self) -> None:
        self._retry = None
        d = defer.Deferred.fromCoroutine(self._import())
        d.addCallbacks(self._imported, self._failed)

    async def _import(self) -> int:
        try:
            users = read_key_file(self.path)
        except FileNotFoundError:  # another process of this node imported it meanwhile
            return 0
        except (OSError, ValueError) as e:
            log.error("SSH: cannot read {path} to import it ({why}); users' keys in it are "
                      "not imported", path=str(self.path), why=str(e))
            return 0
        count = 0
        for user, lines in sorted(users.items()):
            try:
                await self.store.add_user_keys(user, parse_public_keys("\n".join(lines)))
                count += 1
            except (ValueError, BadUserKeys) as e:
                log.error("SSH: the keys of {user} in {path} were not imported: {why}",
                          user=user, path=str(self.path), why=str(e))
        target = self.path.with_name(self.path.name + ".imported")
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            pass
        log.info("SSH: imported the keys of {n} users from {path} into the session "
                 "registry (shared by every node); the file is now {target}", n=count,
                 path=str(self.path), target=str(target))
        return count

    def _imported(self, count: int) -> None:
        if not self.done.called:
            self.done.callback(count)

    def _failed(self, f: Failure) -> None:
        if self._stopped:
            return
        if f.check(StoreUnavailable):
            log.info("SSH: the session registry is unavailable; importing {path} again in "
                     "{delay:g}s", path=str(self.path), delay=IMPORT_RETRY)
        else:
            log.failure("SSH: importing {path} failed; trying again", f, path=str(self.path))
        self._retry = self.clock.callLater(IMPORT_RETRY, self._attempt)
