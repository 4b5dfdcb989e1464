"""kquic-tlshd's configuration, in the style of ``tlshd.conf``.

tlshd reads a GLib key file: ``[debug]``, ``[authenticate]`` and
``[authenticate.client]``/``[authenticate.server]`` with ``x509.*`` paths. kquic-tlshd
reads the same sections with the same keys, so an administrator's tlshd knowledge
carries over, and adds two of its own:

- ``[agent]``: where consumers reach it and how many handshakes run at once;
- ``[key.NAME]``: the keyring. tlshd finds certificates and PSKs in the kernel keyring
  by serial; here each named key gets the serial :func:`~.netlink.key_serial` gives its
  name, so a consumer asks for ``smb`` or ``nfs`` without ever seeing the key.

Relative paths are taken from the config file's directory. Errors name the file, the
section and the key, because an administrator reads them in a journal.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path

from .netlink import key_serial

DEFAULT_SOCKET = "/run/kquic/handshake.sock"
DEFAULT_WORKERS = 8
DEFAULT_MAX_PENDING = 64
MAX_WORKERS = 256
PSK_MIN_SECRET = 16


class ConfigError(ValueError):
    """A configuration the agent refuses to run with."""


@dataclass(frozen=True)
class X509Credentials:
    truststore: str | None = None
    certificate: str | None = None
    private_key: str | None = None
    crl: str | None = None


@dataclass(frozen=True)
class PskKey:
    identity: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class NamedKey:
    name: str
    serial: int
    x509: X509Credentials | None = None
    psk: PskKey | None = None


@dataclass(frozen=True)
class AgentConfig:
    debug_level: int = 0
    tls_level: int = 0
    keyrings: tuple[str, ...] = ()
    client: X509Credentials | None = None
    server: X509Credentials | None = None
    socket_path: str = DEFAULT_SOCKET
    group: str | None = None
    workers: int = DEFAULT_WORKERS
    max_pending: int = DEFAULT_MAX_PENDING
    keys: dict[int, NamedKey] = field(default_factory=dict)

    def key_by_serial(self, serial: int) -> NamedKey | None:
        return self.keys.get(serial)

    def check_files(self) -> list[str]:
        """Files named in the config that this process cannot read. Warnings, not
        errors: a certificate may appear later, and only its handshakes fail."""
        problems = []
        for where, path in self._paths():
            if not os.access(path, os.R_OK):
                problems.append(f"{where}: cannot read {path}")
        return problems

    def _paths(self) -> list[tuple[str, str]]:
        found = []
        for where, creds in (
            ("authenticate.client", self.client),
            ("authenticate.server", self.server),
        ):
            found += _credential_paths(where, creds)
        for key in self.keys.values():
            found += _credential_paths(f"key.{key.name}", key.x509)
        return found


def _credential_paths(where: str, creds: X509Credentials | None) -> list[tuple[str, str]]:
    if creds is None:
        return []
    names = ("truststore", "certificate", "private_key", "crl")
    return [(f"{where} x509.{n}", getattr(creds, n)) for n in names if getattr(creds, n)]


def load_config(path: str | os.PathLike) -> AgentConfig:
    """The configuration at ``path``; a missing file is an error, as for tlshd."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    try:
        return parse_config(text, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(text: str, base_dir: str | os.PathLike = ".") -> AgentConfig:
    parser = configparser.ConfigParser(
        interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"), strict=True
    )
    parser.optionxform = str  # GLib keys are case-sensitive
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise ConfigError(_syntax_error(exc, text.splitlines())) from None
    reader = _Reader(parser, Path(base_dir))
    keyrings = reader.get("authenticate", "keyrings") or ""
    return AgentConfig(
        debug_level=reader.integer("debug", "loglevel", 0, 0, 10),
        tls_level=reader.integer("debug", "tls", 0, 0, 99),
        keyrings=tuple(k.strip() for k in keyrings.split(";") if k.strip()),
        client=reader.credentials("authenticate.client"),
        server=reader.credentials("authenticate.server"),
        socket_path=reader.path("agent", "socket") or DEFAULT_SOCKET,
        group=reader.get("agent", "group"),
        workers=reader.integer("agent", "workers", DEFAULT_WORKERS, 1, MAX_WORKERS),
        max_pending=reader.integer("agent", "max_pending", DEFAULT_MAX_PENDING, 0, 65536),
        keys=reader.keys(),
    )


def _syntax_error(exc: configparser.Error, lines: list[str]) -> str:
    """One line that says where and what: configparser's own message spreads over
    several lines and names ``<string>`` (the text, not the file) as its source."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: {lines[exc.lineno - 1].strip()!r} comes before any [section]"
    if isinstance(exc, configparser.ParsingError):
        lineno = exc.errors[0][0]
        return f"line {lineno}: {lines[lineno - 1].strip()!r} is neither key=value nor a [section]"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"line {exc.lineno}: section [{exc.section}] already exists"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"line {exc.lineno}: [{exc.section}] {exc.option} is set twice"
    return str(exc).splitlines()[0]


class _Reader:
    """Typed access to the parsed sections, with errors that say where."""

    KNOWN = {
        "debug": {"loglevel", "tls", "nl", "delay_done"},
        "authenticate": {"keyrings"},
        "authenticate.client": {
            "x509.truststore",
            "x509.certificate",
            "x509.private_key",
            "x509.crl",
        },
        "authenticate.server": {
            "x509.truststore",
            "x509.certificate",
            "x509.private_key",
            "x509.crl",
        },
        "agent": {"socket", "group", "workers", "max_pending"},
    }
    KEY_OPTIONS = {"type", "identity", "secret"} | KNOWN["authenticate.client"]

    def __init__(self, parser: configparser.ConfigParser, base_dir: Path) -> None:
        self.parser = parser
        self.base_dir = base_dir
        for section in parser.sections():
            known = self.KEY_OPTIONS if section.startswith("key.") else self.KNOWN.get(section)
            if known is None:
                raise ConfigError(f"unknown section [{section}]")
            for option in parser.options(section):
                if option not in known:
                    raise ConfigError(f"[{section}] unknown key {option!r}")

    def get(self, section: str, option: str) -> str | None:
        value = self.parser.get(section, option, fallback=None)
        value = value.strip() if value is not None else None
        return value or None

    def integer(self, section: str, option: str, default: int, low: int, high: int) -> int:
        value = self.get(section, option)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"[{section}] {option}={value!r} is not a number") from None
        if not low <= number <= high:
            raise ConfigError(f"[{section}] {option}={number} is outside {low}..{high}")
        return number

    def path(self, section: str, option: str) -> str | None:
        value = self.get(section, option)
        if value is None:
            return None
        return str(self.base_dir / os.path.expanduser(value))

    def credentials(self, section: str) -> X509Credentials | None:
        if not self.parser.has_section(section):
            return None
        creds = X509Credentials(
            truststore=self.path(section, "x509.truststore"),
            certificate=self.path(section, "x509.certificate"),
            private_key=self.path(section, "x509.private_key"),
            crl=self.path(section, "x509.crl"),
        )
        if bool(creds.certificate) != bool(creds.private_key):
            raise ConfigError(f"[{section}] x509.certificate and x509.private_key go together")
        return creds

    def keys(self) -> dict[int, NamedKey]:
        keys: dict[int, NamedKey] = {}
        for section in self.parser.sections():
            if not section.startswith("key."):
                continue
            key = self._key(section, section[len("key.") :])
            other = keys.get(key.serial)
            if other is not None:
                raise ConfigError(f"[{section}] has the same serial as [key.{other.name}]")
            keys[key.serial] = key
        return keys

    def _key(self, section: str, name: str) -> NamedKey:
        if not name:
            raise ConfigError(f"[{section}] needs a name")
        kind = self.get(section, "type")
        if kind == "x509":
            creds = self.credentials(section)
            if creds is None or not creds.certificate:
                raise ConfigError(
                    f"[{section}] an x509 key needs x509.certificate and x509.private_key"
                )
            return NamedKey(name, key_serial(name), x509=creds)
        if kind == "psk":
            return NamedKey(name, key_serial(name), psk=self._psk(section, name))
        raise ConfigError(f"[{section}] type must be x509 or psk, not {kind!r}")

    def _psk(self, section: str, name: str) -> PskKey:
        identity = self.get(section, "identity") or name
        secret_text = self.get(section, "secret")
        if secret_text is None:
            raise ConfigError(f"[{section}] a psk key needs secret= (hex)")
        try:
            secret = bytes.fromhex(secret_text)
        except ValueError:
            raise ConfigError(f"[{section}] secret is not hex") from None
        if len(secret) < PSK_MIN_SECRET:
            raise ConfigError(f"[{section}] secret is shorter than {PSK_MIN_SECRET} bytes")
        return PskKey(identity, secret)
