"""ngx_mail_auth_http_module: where and how the auth request is sent.

The URL is parsed and its host resolved at load, like nginx: `[http://]host[:port][/uri]` or
`unix:/path[:uri]`; only the first address is used and the Host header is the host as written.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from mailgate.config.address import UrlError, parse_url
from mailgate.config.directives import (
    Context,
    Directive,
    DirectiveCall,
    MergeContext,
    Shape,
    flag_slot,
    inherit,
    inherit_list,
    keyval_slot,
    msec_slot,
)
from mailgate.config.errors import ConfigError
from mailgate.config.model import AuthHttpSettings, AuthHttpUrl
from mailgate.config.values import shown


@dataclass
class AuthHttpConf:
    url: AuthHttpUrl | None = None
    timeout: float | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    pass_client_cert: bool | None = None


def parse_auth_http_url(call: DirectiveCall, value: str) -> AuthHttpUrl:
    """ngx_mail_auth_http: errors read `REASON in auth_http "URL"` (URL without `http://`)."""
    url_text = value[len("http://") :] if value.startswith("http://") else value
    try:
        url = parse_url(url_text, call.loader.lookup, uri_part=True, default_port=80)
    except UrlError as error:
        raise call.error(f'{error} in auth_http "{shown(url_text)}"') from None
    address = url.addresses[0]
    return AuthHttpUrl(
        family=address.family,
        host=address.host,
        port=address.port,
        uri=url.uri or "/",
        host_header="localhost" if address.family == socket.AF_UNIX else url.host,
        text=address.name,
    )


def _auth_http(call: DirectiveCall, conf: AuthHttpConf) -> None:
    # nginx has no duplicate check here: a repeated auth_http replaces the earlier one.
    conf.url = parse_auth_http_url(call, call.args[0])


_M_S = Context.MAIL_OR_SERVER

DIRECTIVES = (
    Directive("auth_http", _M_S, Shape.TAKE1, _auth_http, AuthHttpConf),
    Directive("auth_http_timeout", _M_S, Shape.TAKE1, msec_slot("timeout"), AuthHttpConf),
    Directive("auth_http_header", _M_S, Shape.TAKE2, keyval_slot("headers"), AuthHttpConf),
    Directive("auth_http_pass_client_cert", _M_S, Shape.FLAG, flag_slot("pass_client_cert"), AuthHttpConf),
)


def merge(context: MergeContext, mail: AuthHttpConf, server: AuthHttpConf) -> AuthHttpSettings:
    url = server.url or mail.url
    if url is None:
        raise ConfigError('no "auth_http" is defined for server', context.server_source)
    return AuthHttpSettings(
        url=url,
        timeout=inherit(server.timeout, mail.timeout, 60.0),
        headers=inherit_list(server.headers, mail.headers),
        pass_client_cert=inherit(server.pass_client_cert, mail.pass_client_cert, False),
    )
