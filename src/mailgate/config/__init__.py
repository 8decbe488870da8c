"""The configuration language: nginx-syntax text -> typed, merged, validated `model.Config`.

    loaded = load(Path("/etc/mailgate/mailgate.conf"), Path("/var/lib/mailgate"), "daemon off;")
    loaded.config.mail.servers[0].listens    # typed values, nothing left to parse
    loaded.warnings                          # [warn]/[notice] messages, for the CLI to print
    loaded.dump()                            # what `-T` prints after the test lines

Errors raise ConfigError, the first one only, worded and located as nginx words them; the warnings
logged before it ride along in `error.warnings`. Relative `include`s and certificate, key, CRL, DH,
ticket key and password files resolve against the main file's directory (nginx's conf prefix, also
for files included from elsewhere); `pid` and `error_log` against the prefix. Host names (`listen`,
`auth_http`, `resolver`, `set_real_ip_from`, syslog servers) are resolved once, here.

Not done here: opening log and pid files and everything OpenSSL loads (certificates, keys, ciphers,
curves, DH, CA and CRL files, `ssl_conf_command`), which `mailgate.tls` and the CLI do for `-t`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mailgate.config.address import HostLookup, system_lookup
from mailgate.config.directives.core import CoreConf, build_main
from mailgate.config.directives.mail_core import MailMainConf
from mailgate.config.errors import ConfigError, ConfigWarning
from mailgate.config.loader import Loader, SourceFile, machine_hostname
from mailgate.config.model import Config

__all__ = [
    "DEFAULT_CONF_NAME",
    "DEFAULT_PREFIX",
    "ConfigError",
    "ConfigWarning",
    "LoadedConfig",
    "SourceFile",
    "default_conf_path",
    "default_conf_text",
    "dump",
    "load",
    "load_text",
]

DEFAULT_PREFIX = Path("/var/lib/mailgate")
DEFAULT_CONF_NAME = "conf/mailgate.conf"


def default_conf_path(prefix: Path) -> Path:
    """Where mailgate looks for its configuration without `-c`: `<prefix>/conf/mailgate.conf`."""
    return prefix / DEFAULT_CONF_NAME


def default_conf_text() -> str:
    """The embedded default configuration (used when the default path does not exist)."""
    return resources.files("mailgate").joinpath("data/default.conf").read_text(encoding="utf-8")


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    warnings: list[ConfigWarning]
    sources: tuple[SourceFile, ...]  # every file read, in nginx's -T order, each once

    def dump(self) -> str:
        """What `nginx -T` prints after its test lines: `# configuration file NAME:`, the bytes, a newline.

        Bytes that are not UTF-8 come back as surrogate escapes; write the text with
        `.encode("utf-8", "surrogateescape")` to reproduce the files exactly.
        """
        return "".join(
            f"# configuration file {source.name}:\n{source.content.decode('utf-8', 'surrogateescape')}\n"
            for source in self.sources
        )


def load(
    conf_file: Path,
    prefix: Path,
    extra_directives: str | None = None,
    *,
    lookup: HostLookup | None = None,
) -> LoadedConfig:
    """Read, check and merge the configuration file as `nginx -t -c conf_file -p prefix -g extra` would.

    A relative `conf_file` is relative to `prefix` (as nginx's `-c`). `extra_directives` are main-context
    directives read before the file (errors say `in command line`). `lookup` replaces DNS (tests).
    """
    name = _full_name(str(prefix), str(conf_file))
    loader = _loader(name, prefix, lookup)
    return _load(loader, extra_directives, lambda: loader.read_file(name))


def load_text(
    text: str | bytes,
    name: str,
    prefix: Path,
    extra_directives: str | None = None,
    *,
    lookup: HostLookup | None = None,
) -> LoadedConfig:
    """Like `load`, for configuration text that is not in a file (the embedded default).

    `name` is the file the text stands for: messages and `-T` use it, and relative paths resolve
    against its directory.
    """
    content = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    full = _full_name(str(prefix), name)
    loader = _loader(full, prefix, lookup)
    return _load(loader, extra_directives, lambda: loader.read_text(full, content))


def dump(conf_file: Path, prefix: Path, extra_directives: str | None = None) -> str:
    """Load the configuration and return what `nginx -T` prints after its test lines."""
    return load(conf_file, prefix, extra_directives).dump()


def _full_name(prefix: str, name: str) -> str:
    if name.startswith("/"):
        return name
    return prefix.rstrip("/") + "/" + name


def _loader(main_name: str, prefix: Path, lookup: HostLookup | None) -> Loader:
    return Loader(
        conf_prefix=main_name[: main_name.rfind("/") + 1] or "./",
        prefix=str(prefix).rstrip("/") + "/",
        lookup=lookup or system_lookup,
        hostname=machine_hostname(),
    )


def _load(loader: Loader, extra_directives: str | None, read_main: Callable[[], None]) -> LoadedConfig:
    try:
        if extra_directives:
            loader.read_parameters(extra_directives)
        read_main()
        main_conf = loader.main.conf(CoreConf)
        main = build_main(loader.main, loader)
        mail = main_conf.mail.conf(MailMainConf).config if main_conf.mail is not None else None
    except ConfigError as error:
        error.warnings = list(loader.warnings)
        raise
    main_file = loader.files[0].name
    config = Config(
        conf_file=Path(main_file),
        prefix=Path(loader.prefix),
        main=main,
        mail=mail,
        files=tuple(Path(source.name) for source in loader.files),
    )
    return LoadedConfig(config=config, warnings=loader.warnings, sources=tuple(loader.files))
