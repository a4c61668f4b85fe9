"""The service follows a registry alias: ``serve run registry:production``.

At start the alias's package is fetched from the model registry (:mod:`pinrank.lifecycle.registry`)
into a local cache (``--registry-cache``, one folder per package version, loaded under the
service's trust policy and checked to be the registered version) and served. A
:class:`Follower` thread then asks the registry every ``--registry-poll-s`` seconds where the
alias points; when it points at another package, the follower fetches it and swaps it in with
the same reload as ``POST /admin/reload`` (the scoring processes load it before it is served:
no request fails or waits for the load). A registry that cannot be reached, or a package that is
refused, leaves the service on the model it serves (logged; a refused package is counted in
``pinrank_reloads_total`` as ``refused``) and is tried again at the next poll: an upstream
failure never takes the service down.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pinrank.lifecycle.registry import Registry
    from pinrank.serving.signing import Trust

    from .app import Service

PREFIX = "registry:"
log = logging.getLogger("pinrank.serve")


@dataclass(frozen=True)
class Follow:
    """What the service follows: a registry alias (plain data: Settings holds it)."""

    alias: str
    tracking_uri: str | None = None
    name: str = "pinrank"
    cache: Path = Path("outputs/registry")
    poll_s: float = 15.0

    def registry(self) -> Registry:
        from pinrank.lifecycle.registry import Registry

        return Registry(self.tracking_uri, self.name)

    def fetch(self, trust: Trust) -> Path:
        """The alias's package, fetched into the cache (checked): what the service starts on."""
        return self.registry().fetch(self.alias, self.cache, trust)


def parse_follow(package: str) -> str | None:
    """The alias of a ``registry:ALIAS`` package argument, else ``None``."""
    if not package.startswith(PREFIX):
        return None
    alias = package.removeprefix(PREFIX).removeprefix("@")
    if not alias:
        raise ValueError(f"{package!r}: name an alias, e.g. registry:production")
    return alias


class Follower:
    """Polls the registry and reloads the service when the alias moves (module docstring)."""

    def __init__(self, service: Service, follow: Follow, trust: Trust) -> None:
        self.service, self.follow, self.trust = service, follow, trust
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry: Registry | None = None

    def check(self) -> str | None:
        """One poll: the package version swapped in, or ``None`` when the alias has not moved.
        Raises what fetching or loading the new package raised (the service keeps its model)."""
        if self._registry is None:
            self._registry = self.follow.registry()
        version = self._registry.get(self.follow.alias)
        if version.package_version == self.service.model.version:
            return None
        path = self._registry.fetch(version.number, self.follow.cache, self.trust)
        self.service.reload(str(path))
        log.info("following %s: now v%d (%s)", self.follow.alias, version.number,
                 version.package_version)  # fmt: skip
        return version.package_version

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pinrank-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        from .routes import Busy

        while not self._stop.wait(self.follow.poll_s):
            try:
                self.check()
            except Busy:  # an admin reload is running: next poll
                continue
            except Exception:  # the registry is down, or the package refused: keep serving
                log.exception("following %s: kept the served model", self.follow.alias)
                self._registry = None  # a fresh client next time
