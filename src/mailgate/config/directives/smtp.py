"""ngx_mail_smtp_module: `smtp_auth`, `smtp_capabilities`, `smtp_client_buffer`, `smtp_greeting_delay`."""

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
    msec_slot,
    size_slot,
)
from mailgate.config.model import SmtpAuth, SmtpSettings
from mailgate.config.values import PAGE_SIZE


@dataclass
class SmtpConf:
    auth: set[SmtpAuth] = field(default_factory=set)
    capabilities: list[str] = field(default_factory=list)
    client_buffer: int | None = None
    greeting_delay: float | None = None


_M_S = Context.MAIL_OR_SERVER

DIRECTIVES = (
    Directive("smtp_client_buffer", _M_S, Shape.TAKE1, size_slot("client_buffer"), SmtpConf),
    Directive("smtp_greeting_delay", _M_S, Shape.TAKE1, msec_slot("greeting_delay"), SmtpConf),
    Directive("smtp_capabilities", _M_S, Shape.ONE_MORE, list_slot("capabilities"), SmtpConf),
    Directive(
        "smtp_auth", _M_S, Shape.ONE_MORE, bitmask_slot("auth", {m.value: m for m in SmtpAuth}), SmtpConf
    ),
)


def merge(context: MergeContext, mail: SmtpConf, server: SmtpConf) -> SmtpSettings:
    defaults = SmtpSettings()
    return SmtpSettings(
        auth=frozenset(server.auth or mail.auth or defaults.auth),
        capabilities=inherit_list(server.capabilities, mail.capabilities),
        client_buffer=inherit(server.client_buffer, mail.client_buffer, PAGE_SIZE),
        greeting_delay=inherit(server.greeting_delay, mail.greeting_delay, 0.0),
    )
