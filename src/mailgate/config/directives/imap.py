"""ngx_mail_imap_module: `imap_auth`, `imap_capabilities`, `imap_client_buffer`."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.config.directives import (
    Context,
    Directive,
    MergeContext,
    Shape,
    bitmask_slot,
    inherit,
    inherit_list,
    list_slot,
    size_slot,
)
from mailgate.config.model import ImapAuth, ImapSettings
from mailgate.config.values import PAGE_SIZE


@dataclass
class ImapConf:
    auth: set[ImapAuth] = field(default_factory=set)
    capabilities: list[str] = field(default_factory=list)
    client_buffer: int | None = None


_M_S = Context.MAIL_OR_SERVER

DIRECTIVES = (
    Directive("imap_client_buffer", _M_S, Shape.TAKE1, size_slot("client_buffer"), ImapConf),
    Directive("imap_capabilities", _M_S, Shape.ONE_MORE, list_slot("capabilities"), ImapConf),
    Directive(
        "imap_auth", _M_S, Shape.ONE_MORE, bitmask_slot("auth", {m.value: m for m in ImapAuth}), ImapConf
    ),
)


def merge(context: MergeContext, mail: ImapConf, server: ImapConf) -> ImapSettings:
    defaults = ImapSettings()
    return ImapSettings(
        auth=frozenset(server.auth or mail.auth or defaults.auth),
        capabilities=inherit_list(server.capabilities, mail.capabilities, defaults.capabilities),
        client_buffer=inherit(server.client_buffer, mail.client_buffer, PAGE_SIZE),
    )
