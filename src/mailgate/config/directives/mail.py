"""The `mail {}` block (nginx's ngx_mail.c): its modules, and the merge that ends the block.

As in nginx, when the block closes every module merges every server (module by module, in nginx's module
order), so merge errors come out in nginx's order and before anything after the block is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailgate.config.directives import (
    Context,
    Directive,
    DirectiveCall,
    Level,
    MergeContext,
    Shape,
    auth_http,
    imap,
    mail_core,
    pop3,
    proxy,
    realip,
    smtp,
    ssl,
)
from mailgate.config.directives.core import CoreConf
from mailgate.config.model import MailConfig, ServerConfig


@dataclass(frozen=True)
class MailModule:
    """One nginx mail module: its per-level configuration class, directives and merge."""

    name: str
    conf: type[Any]
    directives: tuple[Directive, ...]
    merge: Callable[[MergeContext, Any, Any], object]


# nginx's order (auto/modules), which is the order merge errors are found in.
MAIL_MODULES = (
    MailModule("core", mail_core.MailCoreConf, mail_core.DIRECTIVES, mail_core.merge),
    MailModule("ssl", ssl.SslConf, ssl.DIRECTIVES, ssl.merge),
    MailModule("pop3", pop3.Pop3Conf, pop3.DIRECTIVES, pop3.merge),
    MailModule("imap", imap.ImapConf, imap.DIRECTIVES, imap.merge),
    MailModule("smtp", smtp.SmtpConf, smtp.DIRECTIVES, smtp.merge),
    MailModule("auth_http", auth_http.AuthHttpConf, auth_http.DIRECTIVES, auth_http.merge),
    MailModule("proxy", proxy.ProxyConf, proxy.DIRECTIVES, proxy.merge),
    MailModule("realip", realip.RealIpConf, realip.DIRECTIVES, realip.merge),
)


def _mail(call: DirectiveCall, main: Level) -> None:
    conf = main.conf(CoreConf)
    if conf.mail is not None:
        raise call.invalid("is duplicate")
    conf_types: list[type[Any]] = [mail_core.MailMainConf, *(module.conf for module in MAIL_MODULES)]
    mail = Level(Context.MAIL, call.source, conf_types, main)
    conf.mail = mail
    end = call.loader.parse_block(Context.MAIL, mail)
    mail.conf(mail_core.MailMainConf).end_source = end
    mail.conf(mail_core.MailMainConf).config = merge_servers(call, mail)


def merge_servers(call: DirectiveCall, mail: Level) -> MailConfig:
    """Every server's settings, merged module by module (nginx's order of merge errors)."""
    main_conf = mail.conf(mail_core.MailMainConf)
    merged: dict[str, list[Any]] = {}
    for module in MAIL_MODULES:
        merged[module.name] = [
            module.merge(
                MergeContext(call.loader, server.source, main_conf.end_source),
                mail.conf(module.conf),
                server.conf(module.conf),
            )
            for server in main_conf.servers
        ]
    servers = []
    for index, server in enumerate(main_conf.servers):
        core_conf = server.conf(mail_core.MailCoreConf)
        assert core_conf.protocol is not None  # the core merge refused a server without one
        servers.append(
            ServerConfig(
                source=server.source,
                protocol=core_conf.protocol,
                listens=tuple(core_conf.listens),
                core=merged["core"][index],
                auth_http=merged["auth_http"][index],
                proxy=merged["proxy"][index],
                realip=merged["realip"][index],
                ssl=merged["ssl"][index],
                imap=merged["imap"][index],
                pop3=merged["pop3"][index],
                smtp=merged["smtp"][index],
            )
        )
    return MailConfig(servers=tuple(servers), source=mail.source)


DIRECTIVES = (Directive("mail", Context.MAIN, Shape.BLOCK | Shape.NOARGS, _mail),)
