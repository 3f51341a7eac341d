"""Validation of inventory records (pure: no I/O besides the time-zone database).

Each record becomes an `ApplianceSpec` or a list of `RowError`s that name the line and the
reason. `validate_records` checks a whole file: a file with any bad row is refused whole.
An inventory file, the API's create, update and import all go through `validate_record`,
so every rule holds whichever way a row arrives.

`TargetPolicy` says where the orchestrator may send an appliance's credentials: which
`credentials_ref`s may be read (environment variables with a prefix, files inside a
secrets directory; never `ORCHESTRATOR_*`) and which `base_url`s may receive them (https
only, no loopback, link-local or cloud metadata address, optionally only allowed networks
and domains). The default policy is the strict one; `orchestrator.inventory.target_policy`
builds it from the settings.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import socket
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from orchestrator.domain.errors import OrchestratorError

FIELDS = (
    "name", "base_url", "site", "tags", "timezone",
    "credentials_ref", "tls_ca_file", "tls_thumbprint",
)
REQUIRED = ("name", "base_url", "site")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# C0 and C1 control characters: no field of an appliance holds them
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A host name: labels of letters, digits and '-' (not at either end), the last one starting
# with a letter (so that it is never a number such as 127.1 or 0x7f, which resolvers read
# as an IPv4 address), an optional final dot. (The API document's patterns use it too.)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME = rf"(?:{_LABEL}\.)*[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.?"
_DNS_NAME = re.compile(DNS_NAME)
# a URL's authority once user:password@ is refused: a host, or [an IPv6 address], then an
# optional :port; nothing else (urlsplit ignores what follows a ']' and reads "h:" as h)
_AUTHORITY = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^\[\]:]*))(?::(?P<port>.*))?")
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
_DOTTED = re.compile(r"[0-9.]+")
# the longest value of each text field (the API's models say the same)
MAX_LENGTH = {
    "name": 253, "base_url": 2048, "site": 200, "timezone": 64, "credentials_ref": 1029,
    "tls_ca_file": 1024, "tls_thumbprint": 95,
}
MAX_TAG_LENGTH = 100
MAX_TAGS = 100
# at most this many row errors are listed; the rest are counted
MAX_LISTED_ERRORS = 100
# the settings' environment variables: never a credentials reference
FORBIDDEN_ENV_PREFIX = "ORCHESTRATOR_"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# cloud instance metadata and similar services: never an appliance, whatever the settings
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, Azure, GCP, OpenStack, Oracle, DigitalOcean ...
    "169.254.169.253",  # AWS DNS
    "169.254.169.123",  # AWS time
    "169.254.170.2",    # AWS ECS task metadata
    "169.254.170.23",   # AWS EKS pod identity
    "fd00:ec2::254",    # AWS IPv6
    "fd00:ec2::253", "fd00:ec2::123", "fd00:ec2::23",
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",    # Azure wire server
))
METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.com", "metadata.tencentyun.com",
})


@dataclass(frozen=True)
class TargetPolicy:
    """Which credentials references may be read and where credentials may be sent.

    The defaults are the strict policy (settings `appliance_credentials_env_prefix`,
    `appliance_secrets_dir`, `appliance_allow_http`, `appliance_allow_local_addresses`,
    `appliance_allowed_networks`, `appliance_allowed_domains`)."""

    env_prefix: str = "APPLIANCE_"
    secrets_dir: str | None = "/etc/orchestrator/secrets"
    allow_http: bool = False
    allow_local: bool = False
    networks: tuple[IPNetwork, ...] = ()
    domains: tuple[str, ...] = ()

    def allowed_refs(self) -> str:
        files = (f"file:/path of a file inside {self.secrets_dir} (appliance_secrets_dir)"
                 if self.secrets_dir else "no file: reference (appliance_secrets_dir is unset)")
        return (f"allowed: env:{self.env_prefix}NAME (appliance_credentials_env_prefix) or "
                f"{files}; never env:{FORBIDDEN_ENV_PREFIX}*")


STRICT_POLICY = TargetPolicy()
# the simulator's and a lab's: http:// and loopback hosts (the demo, benches and tests)
LAB_POLICY = TargetPolicy(allow_http=True, allow_local=True)


@dataclass(frozen=True)
class ApplianceSpec:
    """What an inventory file says about one appliance."""

    name: str
    base_url: str
    site: str
    tags: tuple[str, ...] = ()
    timezone: str | None = None
    credentials_ref: str | None = None
    tls_ca_file: str | None = None
    tls_thumbprint: str | None = None


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ValidationResult:
    specs: list[ApplianceSpec] = field(default_factory=list)
    # the first MAX_LISTED_ERRORS row errors; `more_errors` counts the rest
    errors: list[RowError] = field(default_factory=list)
    more_errors: int = 0

    def add_error(self, error: RowError) -> None:
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(error)
        else:
            self.more_errors += 1

    @property
    def error_count(self) -> int:
        return len(self.errors) + self.more_errors


class TooManyRows(OrchestratorError):
    """The input lists more appliances than one import accepts."""

    def __init__(self, line: int, limit: int) -> None:
        self.line = line
        self.limit = limit
        super().__init__(
            f"more than {limit} appliances: one import accepts at most {limit} "
            "(appliance_import_max_rows); split the file"
        )


def shown(value: str, limit: int = 80) -> str:
    """A value for an error message: its repr, cut short when it is long."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def _text(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        got = repr(value)
        got = got if len(got) <= 80 else got[:80] + "..."
        raise ValueError(f"{key}: must be text, got {type(value).__name__} {got}")
    _storable(value, key)
    text: str = value.strip()
    if not text:
        return None
    if _CONTROL.search(text):
        raise ValueError(f"{key}: {shown(text)} contains control characters")
    limit = MAX_LENGTH.get(key)
    if limit is not None and len(text) > limit:
        raise ValueError(f"{key}: {shown(text)} is longer than {limit} characters")
    return text


def _storable(value: str, key: str) -> None:
    """PostgreSQL text holds neither NUL nor unpaired surrogates: refuse them by name."""
    if "\x00" in value:
        raise ValueError(f"{key}: {shown(value)} contains the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{key}: {shown(value)} is not valid Unicode (unpaired surrogate)") \
            from None


def authority_problem(netloc: str) -> str | None:
    """What is wrong with a URL's host and port (`netloc`, without user:password@), or
    None: a host name, a dotted-quad IPv4 address or an IPv6 address in brackets (no zone,
    no embedded IPv4 address), then an optional port 0-65535 written without leading
    zeros. As the API document's URL patterns say; stricter than urlsplit, which reads
    "[2001:db8::1]x" as the address and "h:" as the host h."""
    found = _AUTHORITY.fullmatch(netloc)
    if found is None:
        return f"has an invalid host {netloc!r} (a host, host:port or [IPv6 address]:port)"
    port, v6, host = found["port"], found["v6"], found["host"]
    if port is not None and (not _PORT.fullmatch(port) or int(port) > 65535):
        return f"has an invalid port {port!r} (a number 0-65535 without leading zeros)"
    if v6 is not None:
        try:
            ipaddress.IPv6Address(v6)
        except ValueError:
            return f"has [{v6}] as its host, which is not an IPv6 address"
        if "%" in v6 or "." in v6:
            return (f"has [{v6}] as its host: write an IPv6 address without a zone, and an "
                    "IPv4 address as a dotted quad such as 192.0.2.10")
        return None
    try:
        if _ip_of(host) is not None:
            return None
    except ValueError:
        return (f"has {host!r} as its host, a numeric address in a non-standard form: "
                "write it as a dotted quad such as 192.0.2.10")
    if _DOTTED.fullmatch(host):
        return f"has {host!r} as its host, which is not an IPv4 address"
    if not _DNS_NAME.fullmatch(host):
        return (f"has {host!r} as its host, which is not a host name (labels of letters, "
                "digits and '-', separated by dots; an internationalised name in its "
                "xn-- form)")
    return None


def check_base_url(value: str, policy: TargetPolicy = STRICT_POLICY) -> str:
    """A valid base URL that the policy lets receive credentials, without its last '/'."""
    if any(ch.isspace() for ch in value):
        raise ValueError(f"base_url: {shown(value)} contains whitespace")
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # a '[' without its ']', not an address within them
        raise ValueError(f"base_url: {shown(value)} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"base_url: {shown(value)} is not an http(s) URL")
    if not parts.hostname:
        raise ValueError(f"base_url: {shown(value)} has no host")
    if parts.username or parts.password:
        raise ValueError(
            "base_url: credentials do not belong in the URL; name a secret in credentials_ref"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"base_url: {value!r} must not carry a query or fragment")
    reasons = []
    if scheme == "http" and not policy.allow_http:
        reasons.append(
            "http:// would send the appliance's credentials in clear text: use "
            "https:// (appliance_allow_http = true allows http for labs and the simulator)")
    reason = host_refusal(parts.hostname, policy)
    if reason:
        reasons.append(reason)
    if reasons:
        raise ValueError(f"base_url: {shown(value)}: " + "; and ".join(reasons))
    # after the policy, whose reasons (a loopback address, however written) say more
    problem = authority_problem(parts.netloc)
    if problem:
        raise ValueError(f"base_url: {shown(value)} {problem}")
    return value.rstrip("/")


def url_host(url: str) -> str:
    """The host of a URL as compared for "the host changed" (lower case, no final dot)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return url
    return host.rstrip(".").lower()


def _ip_of(host: str) -> IPAddress | None:
    """The address of an IP literal host; legacy numeric forms (127.1, 0x7f.0.0.1,
    2130706433), which resolvers accept as IPv4 addresses, raise ValueError."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip
    if re.fullmatch(r"[0-9a-fA-FxX.]+", host) and any(c.isdigit() for c in host):
        try:
            socket.inet_aton(host)
        except OSError:
            return None
        raise ValueError(f"host {host!r} is a numeric address in a non-standard form: "
                         "write it as a dotted quad such as 192.0.2.10")
    return None


def host_refusal(hostname: str, policy: TargetPolicy = STRICT_POLICY) -> str | None:
    """Why the policy refuses this host as an appliance's, or None."""
    host = hostname.rstrip(".").lower()
    if not host:
        return "has no host"
    try:
        ip = _ip_of(host.split("%", 1)[0])
    except ValueError as exc:
        return str(exc)
    local_hint = "(appliance_allow_local_addresses = true allows it for labs and the simulator)"
    if ip is not None:
        if ip in METADATA_ADDRESSES:
            return f"{ip} is a cloud metadata address, never an appliance's"
        if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address(
                "255.255.255.255"):
            return f"{ip} is not an address an appliance can have"
        if (ip.is_loopback or ip.is_link_local) and not policy.allow_local:
            kind = "loopback" if ip.is_loopback else "link-local"
            return f"{ip} is a {kind} address {local_hint}"
        if (policy.networks or policy.domains) and not any(
                ip.version == n.version and ip in n for n in policy.networks):
            listed = ", ".join(str(n) for n in policy.networks) or "none"
            return f"{ip} is in none of appliance_allowed_networks ({listed})"
        return None
    if host in METADATA_NAMES:
        return f"{host!r} is a cloud metadata service, never an appliance"
    if (host == "localhost" or host.endswith(".localhost")) and not policy.allow_local:
        return f"{host!r} is a loopback name {local_hint}"
    if (policy.networks or policy.domains) and not any(
            host == d or host.endswith("." + d) for d in policy.domains):
        listed = ", ".join(policy.domains) or "none"
        return f"{host!r} ends with none of appliance_allowed_domains ({listed})"
    return None


def check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone: {value!r} is not a known IANA time zone") from None
    return value


def check_thumbprint(value: str) -> str:
    normal = value.replace(":", "").lower()
    if not _HEX64.match(normal):
        raise ValueError(
            f"tls_thumbprint: {value!r} is not a SHA-256 thumbprint (64 hex digits, "
            "colons allowed)"
        )
    return normal


def credentials_ref_refusal(value: str, policy: TargetPolicy = STRICT_POLICY) -> str | None:
    """Why the policy refuses this credentials reference, or None (lexical checks only:
    the resolution checks the real path of a file again, symbolic links resolved)."""
    scheme, _, rest = value.partition(":")
    if scheme == "env" and _ENV_NAME.match(rest):
        if rest.upper().startswith(FORBIDDEN_ENV_PREFIX):
            return ("names one of the orchestrator's own settings, which never serve as "
                    f"appliance credentials; {policy.allowed_refs()}")
        if not rest.startswith(policy.env_prefix):
            return (f"names an environment variable without the prefix {policy.env_prefix}; "
                    f"{policy.allowed_refs()}")
        return None
    if scheme == "file" and rest.startswith("/"):
        if policy.secrets_dir is None:
            return f"file references are not allowed; {policy.allowed_refs()}"
        if ".." in rest.split("/"):
            return f"the path holds '..'; {policy.allowed_refs()}"
        if not path_inside(posixpath.normpath(rest), policy.secrets_dir):
            return f"the file is outside {policy.secrets_dir}; {policy.allowed_refs()}"
        return None
    return f"must be env:VARIABLE or file:/absolute/path; {policy.allowed_refs()}"


def path_inside(path: str, directory: str) -> bool:
    """Whether the normalised absolute `path` lies strictly inside `directory`."""
    directory = posixpath.normpath(directory)
    try:
        return path != directory and posixpath.commonpath([path, directory]) == directory
    except ValueError:
        return False


def check_credentials_ref(value: str, policy: TargetPolicy = STRICT_POLICY) -> str:
    reason = credentials_ref_refusal(value, policy)
    if reason:
        raise ValueError(f"credentials_ref: {shown(value)}: {reason}")
    return value


def check_ca_file(value: str) -> str:
    if not value.startswith("/") or any(ch.isspace() for ch in value):
        raise ValueError(f"tls_ca_file: {shown(value)} must be an absolute path without blanks")
    return value


def parse_tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.split(";")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        text = repr(value)
        text = text if len(text) <= 80 else text[:80] + "..."
        raise ValueError(f"tags: must be a list of text or a ';'-separated text, got {text}")
    seen: dict[str, None] = {}
    for item in items:
        _storable(item, "tags")
        tag = item.strip()
        if not tag:
            continue
        if ";" in tag:
            raise ValueError(f"tags: {shown(tag)} contains ';', which separates tags")
        if _CONTROL.search(tag):
            raise ValueError(f"tags: {shown(tag)} contains control characters")
        if len(tag) > MAX_TAG_LENGTH:
            raise ValueError(f"tags: {shown(tag)} is longer than {MAX_TAG_LENGTH} characters")
        seen[tag] = None
        if len(seen) > MAX_TAGS:
            raise ValueError(f"tags: more than {MAX_TAGS} tags")
    return tuple(seen)


def validate_record(
    record: Mapping[str, Any], policy: TargetPolicy = STRICT_POLICY
) -> tuple[ApplianceSpec | None, list[str]]:
    """Validate one record; return the spec or every reason it is bad."""
    reasons: list[str] = []
    unknown = [k for k in record if k not in FIELDS]
    if unknown:
        reasons.append(f"unknown column(s) {', '.join(map(repr, unknown))}")
    values: dict[str, Any] = {}
    for key in ("name", "base_url", "site", "timezone", "credentials_ref", "tls_ca_file",
                "tls_thumbprint"):
        try:
            values[key] = _text(record.get(key), key)
        except ValueError as exc:
            reasons.append(str(exc))
            values[key] = None
    for key in REQUIRED:
        if values.get(key) is None and not any(r.startswith(f"{key}:") for r in reasons):
            reasons.append(f"{key}: required field is missing or empty")
    checks: dict[str, Callable[[str], str]] = {
        "base_url": lambda v: check_base_url(v, policy),
        "timezone": check_timezone,
        "tls_thumbprint": check_thumbprint,
        "credentials_ref": lambda v: check_credentials_ref(v, policy),
        "tls_ca_file": check_ca_file,
    }
    for key, check in checks.items():
        if values.get(key) is not None:
            try:
                values[key] = check(values[key])
            except ValueError as exc:
                reasons.append(str(exc))
    name = values.get("name")
    if name is not None and not _NAME.match(name):
        reasons.append(
            f"name: {name!r} must be 1-253 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    try:
        tags = parse_tags(record.get("tags"))
    except ValueError as exc:
        reasons.append(str(exc))
        tags = ()
    if reasons:
        return None, reasons
    return ApplianceSpec(tags=tags, **values), []


def validate_records(
    records: Iterable[tuple[int, Mapping[str, Any]]],
    policy: TargetPolicy = STRICT_POLICY,
    *,
    max_rows: int | None = None,
    result: ValidationResult | None = None,
) -> ValidationResult:
    """Validate (line, record) pairs; duplicates by name inside the input are errors too.

    Every bad row is reported with every reason (the first MAX_LISTED_ERRORS listed, the
    rest counted): a row is checked for a duplicated name whether or not its other fields
    are valid (and counts as the first holder of its name even when it is bad itself). A
    record `{"__shape__": why}` is a row the parser could not split into fields. More
    than `max_rows` records raise TooManyRows at once."""
    result = ValidationResult() if result is None else result
    first_line: dict[str, int] = {}
    rows = 0
    for line, record in records:
        rows += 1
        if max_rows is not None and rows > max_rows:
            raise TooManyRows(line, max_rows)
        if "__shape__" in record:
            result.add_error(RowError(line, f"row {record['__shape__']}"))
            continue
        spec, reasons = validate_record(record, policy)
        for reason in reasons:
            result.add_error(RowError(line, reason))
        raw_name = record.get("name")
        name = raw_name.strip() if isinstance(raw_name, str) else None
        if name:
            if name in first_line:
                result.add_error(
                    RowError(line, f"name: {shown(name)} duplicates line {first_line[name]}")
                )
                continue
            first_line[name] = line
        if spec is None:
            continue
        result.specs.append(spec)
    return result
