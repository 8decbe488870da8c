"""ngx_mail_realip_module: `set_real_ip_from address | CIDR | hostname | unix:`.

A host name is resolved at load, each address an exact match. A CIDR with host bits set is accepted with
nginx's warning `low address bits of X are meaningless`; what is neither a CIDR nor a known host fails
with `host not found in set_real_ip_from "X"`.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from mailgate.config.address import parse_cidr
from mailgate.config.directives import Context, Directive, DirectiveCall, MergeContext, Shape
from mailgate.config.model import IPNetwork, RealIpSettings
from mailgate.config.values import shown


@dataclass
class RealIpConf:
    trusted: list[IPNetwork] = field(default_factory=list)
    trust_unix: bool = False
    configured: bool = False


def _set_real_ip_from(call: DirectiveCall, conf: RealIpConf) -> None:
    conf.configured = True
    value = call.args[0]
    if value == "unix:":
        conf.trust_unix = True
        return
    cidr = parse_cidr(value)
    if cidr is not None:
        if cidr.host_bits_set:
            call.warn(f"low address bits of {shown(value)} are meaningless")
        conf.trusted.append(cidr.network)
        return
    try:
        addresses = call.loader.lookup(value)
    except LookupError:
        raise call.error(f'host not found in set_real_ip_from "{shown(value)}"') from None
    for family, packed in addresses:
        if family == socket.AF_INET6:
            conf.trusted.append(ipaddress.IPv6Network((packed, 128)))
        else:
            conf.trusted.append(ipaddress.IPv4Network((packed, 32)))


DIRECTIVES = (
    Directive("set_real_ip_from", Context.MAIL_OR_SERVER, Shape.TAKE1, _set_real_ip_from, RealIpConf),
)


def merge(context: MergeContext, mail: RealIpConf, server: RealIpConf) -> RealIpSettings:
    chosen = server if server.configured else mail
    return RealIpSettings(trusted=tuple(chosen.trusted), trust_unix=chosen.trust_unix)
