"""ngx_mail_pop3_module: `pop3_auth`, `pop3_capabilities` (the POP3 client buffer is fixed at 128 bytes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.config.directives import (
    Context,
    Directive,
    MergeContext,
    Shape,
    bitmask_slot,
    inherit_list,
    list_slot,
)
from mailgate.config.model import Pop3Auth, Pop3Settings


@dataclass
class Pop3Conf:
    auth: set[Pop3Auth] = field(default_factory=set)
    capabilities: list[str] = field(default_factory=list)


_M_S = Context.MAIL_OR_SERVER

DIRECTIVES = (
    Directive("pop3_capabilities", _M_S, Shape.ONE_MORE, list_slot("capabilities"), Pop3Conf),
    Directive(
        "pop3_auth", _M_S, Shape.ONE_MORE, bitmask_slot("auth", {m.value: m for m in Pop3Auth}), Pop3Conf
    ),
)


def merge(context: MergeContext, mail: Pop3Conf, server: Pop3Conf) -> Pop3Settings:
    defaults = Pop3Settings()
    return Pop3Settings(
        auth=frozenset(server.auth or mail.auth or defaults.auth),
        capabilities=inherit_list(server.capabilities, mail.capabilities, defaults.capabilities),
    )
