"""ngx_mail_proxy_module: the backend side of a session.

`proxy on|off` is accepted and has no effect, as in nginx. `proxy_protocol` takes `off`, `on` (version 1)
or `v2` (nginx 1.31.4); other values give `invalid value "X"`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.config.directives import (
    Context,
    Directive,
    MergeContext,
    Shape,
    enum_slot,
    flag_slot,
    inherit,
    msec_slot,
    size_slot,
)
from mailgate.config.model import ProxyProtocolOut, ProxySettings
from mailgate.config.values import PAGE_SIZE


@dataclass
class ProxyConf:
    enabled: bool | None = None
    buffer: int | None = None
    pass_error_message: bool | None = None
    proxy_protocol: ProxyProtocolOut | None = None
    smtp_auth: bool | None = None
    timeout: float | None = None
    xclient: bool | None = None


_M_S = Context.MAIL_OR_SERVER

DIRECTIVES = (
    Directive("proxy", _M_S, Shape.FLAG, flag_slot("enabled"), ProxyConf),
    Directive("proxy_buffer", _M_S, Shape.TAKE1, size_slot("buffer"), ProxyConf),
    Directive("proxy_pass_error_message", _M_S, Shape.FLAG, flag_slot("pass_error_message"), ProxyConf),
    Directive(
        "proxy_protocol",
        _M_S,
        Shape.TAKE1,
        enum_slot(
            "proxy_protocol",
            {"off": ProxyProtocolOut.OFF, "on": ProxyProtocolOut.V1, "v2": ProxyProtocolOut.V2},
        ),
        ProxyConf,
    ),
    Directive("proxy_smtp_auth", _M_S, Shape.FLAG, flag_slot("smtp_auth"), ProxyConf),
    Directive("proxy_timeout", _M_S, Shape.TAKE1, msec_slot("timeout"), ProxyConf),
    Directive("xclient", _M_S, Shape.FLAG, flag_slot("xclient"), ProxyConf),
)


def merge(context: MergeContext, mail: ProxyConf, server: ProxyConf) -> ProxySettings:
    return ProxySettings(
        enabled=inherit(server.enabled, mail.enabled, False),
        buffer=inherit(server.buffer, mail.buffer, PAGE_SIZE),
        pass_error_message=inherit(server.pass_error_message, mail.pass_error_message, False),
        proxy_protocol=inherit(server.proxy_protocol, mail.proxy_protocol, ProxyProtocolOut.OFF),
        smtp_auth=inherit(server.smtp_auth, mail.smtp_auth, False),
        timeout=inherit(server.timeout, mail.timeout, 86400.0),
        xclient=inherit(server.xclient, mail.xclient, True),
    )
