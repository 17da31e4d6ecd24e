"""What the edges share: one :class:`Services` per app, built from the settings.

It lives on ``app.state.services``. The app builds it and the edges (REST handlers, the
socket endpoint) read it, so none of them imports another: app -> services, rest,
sockets; rest and sockets -> services.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..auth import Authenticator, OriginPolicy
from ..registry import Refresher, Registry
from ..sessions import SessionService, new_session_id
from ..settings import Settings
from ..stores import SessionStore, store_from_settings


@dataclass
class Services:
    """What the handlers share."""

    settings: Settings
    store: SessionStore
    authenticator: Authenticator
    origins: OriginPolicy
    registry: Registry = field(default_factory=Registry)
    new_session_id: Callable[[], str] = new_session_id
    refresher: Refresher | None = None
    sessions: SessionService = field(init=False)

    def __post_init__(self) -> None:
        # Ids are minted through this object, so that a test may swap the minting.
        self.sessions = SessionService(
            self.settings, self.store, self.registry, lambda: self.new_session_id()
        )

    @classmethod
    def build(cls, settings: Settings, store: SessionStore | None = None) -> Services:
        """The services for ``settings``, with ``store`` instead of the one
        ``settings.redis_url`` names when given."""
        return cls(
            settings=settings,
            store=store if store is not None else store_from_settings(settings),
            authenticator=Authenticator(settings),
            origins=OriginPolicy(settings.allowed_origins),
        )
