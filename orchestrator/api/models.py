"""Request bodies: strict pydantic models whose JSON Schemas are the document's.

The models check shape, types and bounds; the domain (`validate_record`, `parse_selector`,
`parse_strategy`) then applies the same rules as the CLI, and its errors name the field
too. Unknown fields are refused everywhere (`extra="forbid"`). Text fields exclude control
characters and surrounding blanks, so what is stored is exactly what was sent.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from orchestrator.domain.inventory import (
    DNS_NAME,
    MAX_LENGTH,
    METADATA_ADDRESSES,
    METADATA_NAMES,
    STRICT_POLICY,
    TargetPolicy,
)
from orchestrator.domain.strategy import (
    INT64,
    MAX_COUNT,
    STRATEGY_TABLE,
    StrategyKey,
    parse_size,
)
from orchestrator.domain.windows import MAX_DURATION
from orchestrator.store.tokens import MAX_EXPIRY, MIN_EXPIRY
from orchestrator.store.webhooks import EVENT_TYPES


# ------------------------------------------------------------------ exact patterns
# Rules that the domain checks (a number's range, a URL's host, a duration's total) written
# as regular expressions, so that the document says what the server accepts: what such a
# pattern admits, the domain accepts (tests/unit/test_api_document_agrees.py). They are
# built here, not written by hand, and kept to the syntax that JSON Schema (ECMA-262),
# Python's re and pydantic's regex engine read alike (no look-around).
def number_range(low: int, high: int) -> str:
    """A regular expression (no anchors) of the decimal numbers `low`..`high`, written
    without leading zeros."""
    if not 0 <= low <= high:
        raise ValueError(f"not a range of numbers: {low}..{high}")
    parts: list[str] = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = 0 if digits == 1 else 10 ** (digits - 1)
        lo, hi = max(low, first), min(high, 10 ** digits - 1)
        if lo <= hi:
            parts.extend(_same_length(str(lo), str(hi)))
    return _group(parts)


def _group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives matching the numbers lo..hi, both of the same number of digits."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    rest = len(lo) - 1
    any_rest = "[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return [(lo[0] if lo[0] == hi[0] else f"[{lo[0]}-{hi[0]}]") + any_rest]
    if lo[0] == hi[0]:
        return [lo[0] + _group(_same_length(lo[1:], hi[1:]))]
    out = [lo[0] + _group(_same_length(lo[1:], "9" * rest))]
    if int(lo[0]) + 1 < int(hi[0]):
        low_head, high_head = int(lo[0]) + 1, int(hi[0]) - 1
        out.append((str(low_head) if low_head == high_head
                    else f"[{low_head}-{high_head}]") + any_rest)
    return [*out, hi[0] + _group(_same_length("0" * rest, hi[1:]))]


def _caseless(word: str) -> str:
    """`word` in any case (JSON Schema's patterns have no case-insensitive flag)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else _literal(c) for c in word)


def _literal(text: str) -> str:
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in text)


# Controls and every character str.isspace() calls a blank: never inside a URL or a path.
_BLANKS: Final = r"\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_OCTET: Final = number_range(0, 255)
IPV4: Final = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_HEXTET: Final = "[0-9A-Fa-f]{1,4}"
PORT: Final = number_range(0, 65535)


def ipv6(first: str = _HEXTET) -> str:
    """An IPv6 address (eight groups, or fewer with one `::`; no embedded IPv4), its
    first group matching `first` (given: the first group is written out)."""
    forms = [rf"{first}(?::{_HEXTET}){{7}}"]
    for before in range(1, 8):  # groups written before the '::', the first one included
        left = first + (rf"(?::{_HEXTET}){{{before - 1}}}" if before > 1 else "")
        right = rf"(?:{_HEXTET}(?::{_HEXTET}){{0,{6 - before}}})?" if before < 7 else ""
        forms.append(f"{left}::{right}")
    if first == _HEXTET:
        forms.append(rf"::(?:{_HEXTET}(?::{_HEXTET}){{0,6}})?")
    return _group(forms)


def appliance_url(policy: TargetPolicy) -> tuple[str, str]:
    """(pattern, refused): the base URLs `check_base_url` accepts under `policy` are those
    that match `pattern` and not `refused` (the hosts it refuses by name or address).

    The pattern: http(s) only as the policy allows; a host name, a dotted-quad IPv4
    address or a global unicast IPv6 address (2000::/3) in brackets; a port 0-65535; a path
    without blanks; no user:password@, query or fragment. Refused: cloud metadata names and
    addresses, and unless the policy allows local addresses, loopback and link-local ones;
    also 0.x and 224-255.x (unspecified, multicast, reserved) addresses. Allowed networks or
    domains (`appliance_allowed_*`) are not expressible here."""
    if policy.networks or policy.domains:
        raise ValueError("appliance_allowed_networks/domains: not described by a pattern")
    scheme = "[Hh][Tt][Tt][Pp][Ss]" + ("?" if policy.allow_http else "")
    host = rf"(?:{DNS_NAME}|{IPV4}|\[{ipv6('[23][0-9A-Fa-f]{3}')}\])"
    pattern = rf"^{scheme}://{host}(?::{PORT})?(?:/[^{_BLANKS}?#]*)?\??#?$"
    quad = r"\.[0-9]{1,3}"
    refused = [rf"(?:0|22[4-9]|2[3-5][0-9]){quad}{quad}{quad}"]
    refused += [_literal(str(ip)) for ip in sorted(
        a for a in METADATA_ADDRESSES if isinstance(a, ipaddress.IPv4Address))]
    refused += [_caseless(name) + r"\.?" for name in sorted(METADATA_NAMES)]
    if not policy.allow_local:
        refused += [rf"127{quad}{quad}{quad}", rf"169\.254{quad}{quad}",
                    rf"(?:[^:/?#]*\.)?{_caseless('localhost')}\.?"]
    return pattern, rf"^[^:]*://(?:{'|'.join(refused)})(?:[:/?#]|$)"


def credentials_ref(policy: TargetPolicy) -> str:
    """The credentials references `credentials_ref_refusal` accepts under `policy`:
    env:<prefix>NAME, or file:<a path inside the secrets directory> (no '.' or '..'
    segment, no blanks)."""
    prefix = policy.env_prefix
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,126}", prefix) or \
            prefix.upper().startswith("ORCHESTRATOR_"):
        raise ValueError(f"env prefix {prefix!r}: not described by a pattern")
    forms = [rf"env:{prefix}[A-Za-z0-9_]{{0,{128 - len(prefix)}}}"]
    if policy.secrets_dir is not None:
        directory = posixpath.normpath(policy.secrets_dir).rstrip("/")
        segment = rf"(?:[^{_BLANKS}/.]|\.[^{_BLANKS}/.]|\.\.[^{_BLANKS}/])[^{_BLANKS}/]*"
        forms.append(rf"file:{_literal(directory)}(?:/{segment})+/?")
    return "^(?:" + "|".join(forms) + ")$"


def _later_units(units: list[tuple[str, str]]) -> str:
    """One or more of `units` ((value pattern, unit) each), in this order, each once."""
    return _group([value + unit + "".join(f"(?:{v}{u})?" for v, u in units[i + 1:])
                   for i, (value, unit) in enumerate(units)])


def expiry_pattern(least: int, most: int) -> str:
    """Token lifetimes from `least` to `most` seconds as `parse_expiry` reads them: one unit
    (w, d, h, m or s; at most 6 digits) with its number in range, or several units in the
    order w d h m s, each at most once, the first one not 0 (w, d, h or m), with at most
    2, 3, 4, 5 and 6 digits (whatever the digits, the total stays in range)."""
    size = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
    digits = {"w": 2, "d": 3, "h": 4, "m": 5, "s": 6}
    if least > 60 or sum((10 ** digits[u] - 1) * size[u] for u in size) > most:
        raise ValueError(f"{least}..{most} seconds: the unit digits do not fit")
    forms = [number_range(-(-least // n), min(most // n, 999_999)) + u for u, n in size.items()]
    units = list(size)
    for i, unit in enumerate(units[:-1]):
        later = [(f"[0-9]{{1,{digits[u]}}}", u) for u in units[i + 1:]]
        forms.append(number_range(1, 10 ** digits[unit] - 1) + unit + _later_units(later))
    return "^(?:" + "|".join(forms) + ")$"


def window_duration_pattern(least: int, most: int) -> str:
    """Durations from `least` to `most` seconds as `parse_duration` reads them: whole
    seconds (`3600`, `3600.0`), one unit (d, h, m or s) with its number in range, or
    several in the order d h m s, each at most once, the first not 0, with at most 23 h,
    59 m and 59 s after the first (so that the total stays in range)."""
    size = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    rest = 23 * 3_600 + 59 * 60 + 59
    if (most - rest) // size["d"] < 1:
        raise ValueError(f"{least}..{most} seconds: too short for several units")
    forms = [number_range(least, most) + r"(?:\.0+)?"]
    forms += [number_range(-(-least // n), most // n) + u for u, n in size.items()]
    later_value = {"h": "(?:[01]?[0-9]|2[0-3])", "m": "[0-5]?[0-9]", "s": "[0-5]?[0-9]"}
    first = {"d": number_range(1, (most - rest) // size["d"]), "h": number_range(1, 23),
             "m": number_range(1, 59)}
    units = list(size)
    for i, unit in enumerate(units[:-1]):
        later = [(later_value[u], u) for u in units[i + 1:]]
        forms.append(first[unit] + unit + _later_units(later))
    return "^(?:" + "|".join(forms) + ")$"


_CRON_DAYS: Final = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_CRON_MONTHS: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                       "NOV", "DEC")


def _cron_field(low: int, high: int, names: tuple[str, ...] = (), *,
                day_of_month: bool = False, day_of_week: bool = False) -> str:
    """One field of a cron expression as cronsim reads it: `*`, a value (a number in
    range, leading zeros allowed, or a name in any case), a range `a-b`, each with an
    optional step `/n` (n >= 1); a list of those, comma-separated; and the specials `L`
    and `LW` (day of month), `5L` and `MON#2` (day of week)."""
    value = _group([f"0*{number_range(low, high)}", *(_caseless(n) for n in names)])
    step = "(?:/0*[1-9][0-9]*)?"
    terms = [rf"\*{step}", f"{value}(?:-{value})?{step}"]
    if day_of_month:
        terms.append("[Ll][Ww]?")
    if day_of_week:
        terms += [f"0*[{low}-{high}][Ll]", f"{value}#0*[1-5]"]
    term = _group(terms)
    return f"{term}(?:,{term})*"


def cron_pattern() -> str:
    """5-field cron expressions (minute hour day-of-month month day-of-week), single blanks
    between the fields. What the pattern cannot say: a range's end before its start
    (`5-3`), a day that no month of the expression has (`30 2`), an expression that never
    opens within 400 days."""
    fields = (_cron_field(0, 59), _cron_field(0, 23), _cron_field(1, 31, day_of_month=True),
              _cron_field(1, 12, _CRON_MONTHS), _cron_field(0, 7, _CRON_DAYS, day_of_week=True))
    return "^" + " ".join(fields) + "$"

# Blanks Python's str.strip() removes, and U+FEFF: none may open or close a text value.
_EDGE = (r"[^\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
         r"\ufeff]")
_INNER = r"[^\x00-\x1f\x7f-\x9f]"
TEXT: Final = f"^{_EDGE}({_INNER}*{_EDGE})?$"
NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
TOKEN_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"  # noqa: S105 - a pattern
URL: Final = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f-\x9f]+$"
TIMEZONE: Final = r"^[A-Za-z][A-Za-z0-9_+/-]{0,63}$"
# documented as the TimeZone component (api/schemas.py: the zones this server knows);
# api/openapi.py turns the marker into its $ref (pydantic resolves a $ref given here
# against its own definitions only)
TIMEZONE_REF: Final = {"type": "string", "x-component": "TimeZone"}
CREDENTIALS_REF: Final = r"^(env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:/[^\x00-\x20\x7f-\x9f]{0,1023})$"
PATH: Final = rf"^/[^{_BLANKS}]{{0,1023}}$"
THUMBPRINT: Final = r"^[0-9A-Fa-f]{2}(:?[0-9A-Fa-f]{2}){31}$"
# a tag holds no ';' (an inventory file's separator), at either end neither
_TAG_EDGE = _EDGE[:-1] + ";]"
TAG: Final = f"^{_TAG_EDGE}([^\\x00-\\x1f\\x7f-\\x9f;]*{_TAG_EDGE})?$"
# percentages: at most 100, at most 6 decimals; PERCENT admits 0 (max_failures: "0%"),
# POSITIVE_PERCENT does not (wave sizes): a pattern each, so that the document says exactly
# what is accepted (the domain's parse_size agrees)
_UNDER_100: Final = r"[0-9]{1,2}(\.[0-9]{1,6})?"
_NONZERO_DECIMALS: Final = (r"([1-9][0-9]{0,5}|0[1-9][0-9]{0,4}|00[1-9][0-9]{0,3}"
                            r"|000[1-9][0-9]{0,2}|0000[1-9][0-9]?|00000[1-9])")
PERCENT: Final = rf"^(100(\.0{{1,6}})?|{_UNDER_100})%$"
POSITIVE_PERCENT: Final = (rf"^(100(\.0{{1,6}})?|0?[1-9](\.[0-9]{{1,6}})?"
                           rf"|[1-9][0-9](\.[0-9]{{1,6}})?|0{{1,2}}\.{_NONZERO_DECIMALS})%$")
# years 0001-9999 (Python's and so the server's range; year 0000 is RFC 3339 but no time)
DATETIME: Final = (r"^([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
                   r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3])"
                   r":[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
VERSION: Final = r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,99}$"
EXPIRY: Final = r"^([0-9]{1,6}[wdhms]){1,5}$"

# What the document says where the models check less than the domain (`DOC_*`: the
# documented pattern of a field whose model keeps a looser one, so that the server's own
# settings decide, e.g. an http:// base URL in a lab). Each admits only values the domain
# accepts under the default settings, whose target policy is the strict one (https only,
# no loopback or link-local host; credentials in env:APPLIANCE_* or files inside
# /etc/orchestrator/secrets): other settings accept more, or less (docs/api.md).
DOC_APPLIANCE_URL, DOC_REFUSED_HOSTS = appliance_url(STRICT_POLICY)
DOC_WEBHOOK_URL: Final = (rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:{DNS_NAME}|{IPV4}|\[{ipv6()}\])"
                          rf"(?::{PORT})?(?:[/?#][^{_BLANKS}]*)?$")
DOC_CREDENTIALS_REF: Final = credentials_ref(STRICT_POLICY)
DOC_EXPIRY: Final = expiry_pattern(int(MIN_EXPIRY.total_seconds()),
                                   int(MAX_EXPIRY.total_seconds()))


def documented(pattern: str, **more: Any) -> dict[str, Any]:
    """`json_schema_extra` of a field documented with `pattern` (and `more`), not with the
    model's own looser one."""
    return {"pattern": pattern, **more}

# What a pattern means, for error messages (the regex itself helps nobody).
PATTERN_HINTS: Final = {
    TEXT: "must be text without control characters or leading/trailing blanks",
    NAME: "must be 1-253 letters, digits, '.', '_' or '-', starting with a letter or digit",
    TOKEN_NAME: "must be 1-100 letters, digits, '.', '_', '@' or '-', starting with a "
                "letter or digit",
    URL: "must be an http:// or https:// URL without blanks",
    DOC_APPLIANCE_URL: "an https:// URL: a host name, an IPv4 address or a global IPv6 "
                       "address in brackets, an optional port and path; no blanks, "
                       "user:password@, query or fragment",
    DOC_WEBHOOK_URL: "an http:// or https:// URL: a host name or an IP address, an optional "
                     "port, path and query; no blanks or user:password@",
    TIMEZONE: "must be an IANA time zone name such as Europe/Amsterdam",
    CREDENTIALS_REF: "must be env:VARIABLE or file:/absolute/path",
    DOC_CREDENTIALS_REF: (f"env:{STRICT_POLICY.env_prefix}NAME or file:/path of a file inside "
                          f"{STRICT_POLICY.secrets_dir} (the default settings)"),
    PATH: "must be an absolute path without blanks",
    THUMBPRINT: "must be a SHA-256 thumbprint: 64 hex digits, colons between pairs allowed",
    TAG: "must be text without ';', control characters or leading/trailing blanks",
    PERCENT: "must be a percentage from 0 to 100 such as \"10%\" or \"2.5%\"",
    POSITIVE_PERCENT: "must be a percentage above 0, at most 100, such as \"10%\" or "
                      "\"2.5%\"",
    DATETIME: "must be an RFC 3339 time with a zone, e.g. 2026-12-01T22:00:00+01:00",
    VERSION: "must be a version: letters, digits, '.', '_', '+', '~' or '-'",
    EXPIRY: "must be a duration such as 30d, 12h, 90m or 1d12h (units w, d, h, m, s)",
    DOC_EXPIRY: "a duration from 1 minute to 3650 days such as 30d, 12h, 90m or 1d12h (one "
                "unit, or several in the order w d h m s)",
}


# tags as one text (an inventory file's column), separated by ';', empty ones skipped: the
# server takes up to 100, the document says 50 (a pattern repeating 100 tags of up to 100
# characters is more than regular expression engines such as jsonschema-rs's compile)
_TAG_TEXT: Final = f"{_TAG_EDGE}(?:[^\\x00-\\x1f\\x7f-\\x9f;]{{0,98}}{_TAG_EDGE})?"
TAG_LIST: Final = f"^(?:{_TAG_TEXT})?(?:;(?:{_TAG_TEXT})?){{0,49}}$"
PATTERN_HINTS[TAG_LIST] = ("tags separated by ';', each without control characters or "
                           "leading/trailing blanks")

Text = Annotated[str, Field(min_length=1, max_length=200, pattern=TEXT)]
Tag = Annotated[str, Field(min_length=1, max_length=100, pattern=TAG)]


def _drop_null_defaults(schema: dict[str, Any], model: type[Any]) -> None:
    """A field that may be left out but not be null documents neither `default: null` nor
    null among its values (the server refuses it); a model's `example` becomes the
    schema's `examples`."""
    for key in getattr(model, "not_null", ()):
        prop = schema.get("properties", {}).get(key)
        if not isinstance(prop, dict):
            continue
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        branches = [b for b in prop.get("anyOf", ()) if b != {"type": "null"}]
        if "anyOf" in prop and len(branches) < len(prop["anyOf"]):
            del prop["anyOf"]
            if len(branches) == 1:
                prop.update(branches[0])
            else:
                prop["anyOf"] = branches
    example = getattr(model, "example", None)
    if example:
        schema["examples"] = [example]
    at_least_one = getattr(model, "at_least_one_of", ())
    if at_least_one:  # e.g. a window covers at least one site or tag
        schema["anyOf"] = [{"required": [k], "properties": {k: {"minItems": 1}}}
                           for k in at_least_one]


class Body(BaseModel):
    """Strict, closed objects. `not_null`: optional fields that may be left out but not
    sent as null (PATCH semantics: null clears a field, so it is refused where a field
    cannot be cleared)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              json_schema_extra=_drop_null_defaults)
    not_null: ClassVar[frozenset[str]] = frozenset()
    example: ClassVar[dict[str, Any]] = {}

    @field_validator("*", mode="before")
    @classmethod
    def _no_nulls(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name in cls.not_null:
            raise ValueError("may be left out but not null")
        return value

    def given(self) -> dict[str, Any]:
        """The fields the client sent (not the defaults)."""
        return self.model_dump(exclude_unset=True)


# ------------------------------------------------------------------ sizes and times
def _size_check(min_count: int, zero_percent: bool) -> Callable[[Any], int | str]:
    def check(value: Any) -> int | str:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"{value!r} is not a count or a percentage string")
        if isinstance(value, int) and value > MAX_COUNT:
            raise ValueError(f"{value} is larger than {MAX_COUNT}")
        pattern = PERCENT if zero_percent else POSITIVE_PERCENT
        if isinstance(value, str) and re.fullmatch(pattern, value) is None:
            raise ValueError(f"{value!r} {PATTERN_HINTS[pattern]}")
        parse_size(value, min_count=min_count, zero_percent=zero_percent)  # ValueError
        return value

    return check


def _size_schema(min_count: int, zero_percent: bool) -> dict[str, Any]:
    return {"oneOf": [
        {"type": "integer", "minimum": min_count, "maximum": MAX_COUNT},
        {"type": "string", "pattern": PERCENT if zero_percent else POSITIVE_PERCENT},
    ], "description": "A count, or a percentage of the targeted appliances such as \"10%\"."}


def _size_type(min_count: int, zero_percent: bool) -> Any:
    """A count >= min_count (at most MAX_COUNT) or a percentage string."""
    return Annotated[int | str, PlainValidator(_size_check(min_count, zero_percent)),
                     WithJsonSchema(_size_schema(min_count, zero_percent))]


Service = Annotated[str, Field(min_length=1, max_length=100,
                               pattern=r"^[A-Za-z0-9._-]+(\|[A-Za-z0-9._-]+)*$")]


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid time") from None


# ------------------------------------------------------------------ appliances
class ApplianceCreate(Body):
    """A new appliance. Same fields and rules as a row of an inventory file."""

    name: Annotated[str, Field(pattern=NAME, max_length=253,
                               description="Unique name; the appliance's identifier.")]
    base_url: Annotated[str, Field(pattern=URL, max_length=2048, json_schema_extra=documented(
        DOC_APPLIANCE_URL, **{"not": {"pattern": DOC_REFUSED_HOSTS}}), description=(
        "The whole API prefix, e.g. https://vr01.example.net/api/rest/configure/v1. Never a "
        "loopback, link-local or cloud metadata host (under the default settings)."))]
    site: Text
    tags: Annotated[list[Tag], Field(max_length=100)] = []
    timezone: Annotated[str, Field(pattern=TIMEZONE), WithJsonSchema(TIMEZONE_REF)] | None = None
    credentials_ref: Annotated[str, Field(
        pattern=CREDENTIALS_REF, max_length=MAX_LENGTH["credentials_ref"],
        json_schema_extra=documented(DOC_CREDENTIALS_REF), description=(
            "Where the username:password secret lives: env:VARIABLE or file:/path (under "
            "the default settings, env:APPLIANCE_* or a file inside "
            "/etc/orchestrator/secrets)."))] | None = None
    tls_ca_file: Annotated[str, Field(pattern=PATH)] | None = None
    tls_thumbprint: Annotated[str, Field(pattern=THUMBPRINT)] | None = None
    example: ClassVar[dict[str, Any]] = {
        "name": "vr-ams-01", "base_url": "https://vr-ams-01.example.net/api/rest/configure/v1",
        "site": "ams", "tags": ["prod"], "timezone": "Europe/Amsterdam",
        "credentials_ref": "env:APPLIANCE_CREDENTIALS",
    }


class AppliancePatch(Body):
    """Fields to change. Left out: unchanged. null clears an optional field."""

    not_null: ClassVar[frozenset[str]] = frozenset({"base_url", "site", "tags", "enabled"})

    base_url: Annotated[str, Field(pattern=URL, max_length=2048, json_schema_extra=documented(
        DOC_APPLIANCE_URL, **{"not": {"pattern": DOC_REFUSED_HOSTS}}))] \
        | SkipJsonSchema[None] = None
    site: Text | SkipJsonSchema[None] = None
    tags: Annotated[list[Tag], Field(max_length=100)] | SkipJsonSchema[None] = None
    timezone: Annotated[str, Field(pattern=TIMEZONE), WithJsonSchema(TIMEZONE_REF)] | None = None
    credentials_ref: Annotated[str, Field(
        pattern=CREDENTIALS_REF, max_length=MAX_LENGTH["credentials_ref"],
        json_schema_extra=documented(DOC_CREDENTIALS_REF))] | None = None
    tls_ca_file: Annotated[str, Field(pattern=PATH)] | None = None
    tls_thumbprint: Annotated[str, Field(pattern=THUMBPRINT)] | None = None
    enabled: bool | SkipJsonSchema[None] = Field(default=None, description=(
        "false: new rollouts do not target it (planned tasks stay)."))


# ------------------------------------------------------------------ rollouts
class Selector(Body):
    """Which enabled appliances: AND across fields, OR within one. {} targets all."""

    sites: Annotated[list[Text], Field(min_length=1, max_length=1000)] | SkipJsonSchema[None] = None
    tags: Annotated[list[Tag], Field(min_length=1, max_length=1000)] | SkipJsonSchema[None] = None
    names: Annotated[list[Annotated[str, Field(pattern=NAME)]],
                     Field(min_length=1, max_length=100_000)] | SkipJsonSchema[None] = None
    current_versions: Annotated[list[Text], Field(min_length=1, max_length=1000)] \
        | SkipJsonSchema[None] = None
    not_null: ClassVar[frozenset[str]] = frozenset(
        {"sites", "tags", "names", "current_versions"})


def _strategy_type(key: StrategyKey) -> Any:
    """The pydantic type of a strategy key's value, from its row of STRATEGY_TABLE."""
    most = key.api_maximum
    t: Any
    if key.kind == "waves":
        t = Annotated[list[_size_type(1, False)],  # type: ignore[misc]
                      Field(min_length=1, max_length=key.max_items)]
    elif key.kind == "size":
        t = _size_type(key.minimum or 0, key.zero_percent)
    elif key.kind == "choice":
        t = Literal[key.choices]
    elif key.kind == "int":
        t = Annotated[int, Field(ge=INT64[0] if key.minimum is None else key.minimum, le=most)]
    elif key.kind == "seconds":
        least = key.minimum or 0
        t = Annotated[float, Field(gt=least, le=most) if key.exclusive_minimum
                      else Field(ge=least, le=most)]
    elif key.kind == "services":
        t = Annotated[list[Service], Field(max_length=key.max_items)]
    elif key.kind == "bool":
        t = bool
    elif key.kind == "text":
        t = Annotated[str, Field(min_length=1, max_length=most)]
    else:  # pragma: no cover - Kind lists them all
        raise AssertionError(key.kind)
    return t | None if key.nullable else t


def _strategy_fields() -> dict[str, Any]:
    return {key.name: (_strategy_type(key), Field(default=key.default, description=key.doc))
            for key in STRATEGY_TABLE}


# The request's strategy object, built from the domain's STRATEGY_TABLE: one field per key,
# its bounds and default from the table. Its OpenAPI name stays "Strategy"; in the code,
# `Strategy` is the domain's parsed strategy (orchestrator.domain.strategy.Strategy).
if TYPE_CHECKING:
    StrategyBody = Body
else:
    StrategyBody = create_model(
        "Strategy", __base__=Body, __module__=__name__,
        __doc__="How the rollout runs; every field is optional (the defaults are shown).",
        __namespace__={"not_null": frozenset(
            key.name for key in STRATEGY_TABLE if not key.nullable)},
        **_strategy_fields())


class PlanRequest(Body):
    target_version: Annotated[str, Field(pattern=VERSION, description=(
        "The version to install, e.g. 9.0.1-20020."))]
    selector: Selector = Field(default=Selector(), description=(
        "Which appliances; left out: every enabled appliance."))
    strategy: StrategyBody = Field(default=StrategyBody(), description=(
        "How it runs; left out, or any key left out: the defaults in Strategy."))
    not_null: ClassVar[frozenset[str]] = frozenset({"selector", "strategy"})
    example: ClassVar[dict[str, Any]] = {
        "target_version": "9.0.1-20020", "selector": {"sites": ["ams"]},
        "strategy": {"waves": [1, "50%", "100%"], "max_concurrency": 5},
    }

    def selector_dict(self) -> dict[str, Any]:
        return self.selector.given() if "selector" in self.model_fields_set else {}

    def strategy_dict(self) -> dict[str, Any]:
        return self.strategy.given() if "strategy" in self.model_fields_set else {}


class RolloutCreate(PlanRequest):
    """A rollout in DRAFT with its plan snapshot; start it with POST .../start."""

    name: Annotated[str, Field(min_length=1, max_length=200, pattern=TEXT,
                               description="A name people will recognise.")]
    schedule_at: Annotated[str, Field(pattern=DATETIME, json_schema_extra={
        "format": "date-time"}, description=(  # the pattern cannot tell February 30th
        "Start no earlier than this time (RFC 3339 with a zone)."))] | None = None
    example: ClassVar[dict[str, Any]] = {
        "name": "9.0.1 to ams", **PlanRequest.example,
        "strategy": {"waves": [1, "50%", "100%"], "max_concurrency": 5,
                     "approval": "after-canary"},
    }


# ------------------------------------------------------------------ maintenance windows
CRON: Final = r"^[\x21-\x7e]+( [\x21-\x7e]+){4}$"
DURATION_TEXT: Final = r"^[0-9][0-9hmsd ]{0,30}$"
PATTERN_HINTS[CRON] = "must be a 5-field cron expression such as \"0 22 * * 1-5\""
PATTERN_HINTS[DURATION_TEXT] = "must be seconds or a duration such as \"4h\", \"90m\", \"1h30m\""
LONGEST_WINDOW: Final = int(MAX_DURATION.total_seconds())
DOC_CRON: Final = cron_pattern()
DOC_WINDOW_DURATION: Final = window_duration_pattern(1, LONGEST_WINDOW)
DOC_WINDOW_CUTOFF: Final = window_duration_pattern(0, LONGEST_WINDOW - 1)
PATTERN_HINTS[DOC_CRON] = ("a 5-field cron expression such as \"0 22 * * 1-5\" (minute hour "
                           "day-of-month month day-of-week)")
PATTERN_HINTS[DOC_WINDOW_DURATION] = ("whole seconds or a duration such as \"4h\", \"90m\", "
                                      "\"1h30m\": above 0, at most 7 days")
PATTERN_HINTS[DOC_WINDOW_CUTOFF] = "whole seconds or a duration such as \"30m\": under 7 days"
WindowDuration = Annotated[
    Annotated[int, Field(ge=1, le=LONGEST_WINDOW)]
    | Annotated[str, Field(pattern=DURATION_TEXT,
                           json_schema_extra=documented(DOC_WINDOW_DURATION))],
    Field(description="Whole seconds, or text such as \"4h\", \"90m\", \"1h30m\"; above 0, at "
                      "most 7 days."),
]
WindowCutoff = Annotated[
    Annotated[int, Field(ge=0, le=LONGEST_WINDOW - 1)]
    | Annotated[str, Field(pattern=DURATION_TEXT,
                           json_schema_extra=documented(DOC_WINDOW_CUTOFF))],
    Field(description="Whole seconds, or text such as \"30m\"; shorter than the duration."),
]


class WindowCreate(Body):
    """A maintenance window: the same rules as `orchestrator windows create`."""

    name: Annotated[str, Field(pattern=NAME, max_length=200, description="Unique name.")]
    cron: Annotated[str, Field(pattern=CRON, max_length=200, json_schema_extra=documented(
        DOC_CRON), description=(
        "5-field cron expression read on the local wall clock of `timezone` (or of the "
        "appliance's own zone), e.g. \"0 22 * * 1-5\"."))]
    duration: WindowDuration
    timezone: Annotated[str, Field(pattern=TIMEZONE), WithJsonSchema(TIMEZONE_REF)]
    cutoff: WindowCutoff = 0
    sites: Annotated[list[Text], Field(max_length=1000)] = []
    tags: Annotated[list[Tag], Field(max_length=1000)] = []
    not_null: ClassVar[frozenset[str]] = frozenset({"cutoff", "sites", "tags"})
    at_least_one_of: ClassVar[tuple[str, ...]] = ("sites", "tags")
    example: ClassVar[dict[str, Any]] = {
        "name": "nightly-ams", "cron": "0 22 * * *", "duration": "4h",
        "timezone": "Europe/Amsterdam", "cutoff": "30m", "sites": ["ams"],
    }


class WindowPatch(Body):
    """Fields to change; left out: unchanged. The result is validated as a whole."""

    not_null: ClassVar[frozenset[str]] = frozenset(
        {"name", "cron", "duration", "timezone", "cutoff", "sites", "tags"})
    name: Annotated[str, Field(pattern=NAME, max_length=200)] | SkipJsonSchema[None] = None
    cron: Annotated[str, Field(pattern=CRON, max_length=200, json_schema_extra=documented(
        DOC_CRON))] | SkipJsonSchema[None] = None
    duration: WindowDuration | SkipJsonSchema[None] = None
    timezone: Annotated[str, Field(pattern=TIMEZONE), WithJsonSchema(TIMEZONE_REF)] | \
        SkipJsonSchema[None] = None
    cutoff: WindowCutoff | SkipJsonSchema[None] = None
    sites: Annotated[list[Text], Field(max_length=1000)] | SkipJsonSchema[None] = None
    tags: Annotated[list[Tag], Field(max_length=1000)] | SkipJsonSchema[None] = None
    example: ClassVar[dict[str, Any]] = {"duration": "5h", "cutoff": "45m"}


# ------------------------------------------------------------------ sites
class SiteLimit(Body):
    """A site's fleet-wide capacity: installs in flight there, all rollouts together."""

    max_in_flight: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = Field(description=(
        "At most this many installs in flight at the site across every rollout; null: "
        "unlimited (the limit is cleared)."))
    example: ClassVar[dict[str, Any]] = {"max_in_flight": 8}


# ------------------------------------------------------------------ webhooks
# A webhook's name (store.webhooks.check_name); `deliveries` is refused as one because
# /api/v1/webhooks/deliveries lists the deliveries.
WEBHOOK_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
RESERVED_WEBHOOK_NAMES: Final = frozenset({"deliveries"})
PATTERN_HINTS[WEBHOOK_NAME] = ("must be 1-63 letters, digits, '.', '_' or '-', starting with "
                               "a letter or digit")
EventType = Literal[
    "rollout.started", "rollout.scheduled", "wave.started", "wave.finished",
    "approval.required", "rollout.paused", "rollout.resumed", "policy.tripped",
    "window.closed", "rollout.finished", "task.failed", "ping",
]
if get_args(EventType) != EVENT_TYPES:  # pragma: no cover - caught by any import
    raise AssertionError("api.models.EventType must list store.webhooks.EVENT_TYPES")


class WebhookCreate(Body):
    """A webhook: where the events go, which ones, and how they are signed. Same rules as
    `orchestrator webhooks add`."""

    name: Annotated[str, Field(pattern=WEBHOOK_NAME, max_length=63, json_schema_extra={
        "not": {"enum": sorted(RESERVED_WEBHOOK_NAMES)}}, description="Unique name.")]
    url: Annotated[str, Field(pattern=URL, max_length=2048, json_schema_extra=documented(
        DOC_WEBHOOK_URL), description=(
        "Where the events are POSTed: an http:// or https:// URL with a host and no "
        "user:password@ (sign the requests with `secret_ref` instead)."))]
    events: Annotated[list[EventType], Field(
        min_length=1, max_length=len(EVENT_TYPES), json_schema_extra={"uniqueItems": True},
        description="Only these event types; left out or null: every event.")] | None = None
    rollout_id: Annotated[int, Field(ge=1, le=INT64[1], description=(
        "Only this rollout's events; left out or null: every rollout."))] | None = None
    site: Annotated[str, Field(min_length=1, max_length=200, pattern=TEXT, description=(
        "Only events about this site; left out or null: every site."))] | None = None
    secret_ref: Annotated[str, Field(pattern=CREDENTIALS_REF, max_length=MAX_LENGTH[
        "credentials_ref"], json_schema_extra=documented(DOC_CREDENTIALS_REF), description=(
        "Where the signing secret lives: env:VARIABLE or file:/path, under the same rules "
        "as an appliance's credentials_ref (`appliance_credentials_env_prefix`, "
        "`appliance_secrets_dir`); never the secret itself. Left out or null: unsigned."
    ))] | None = None
    format: Literal["json", "slack"] = Field(default="json", description=(
        "json: the event as documented in docs/notifications.md; slack: "
        "{\"text\": ...} for Slack and Mattermost incoming webhooks."))
    not_null: ClassVar[frozenset[str]] = frozenset({"format"})
    example: ClassVar[dict[str, Any]] = {
        "name": "ops-chat", "url": "https://hooks.example.net/services/T0/B0",
        "events": ["approval.required", "policy.tripped", "rollout.finished"],
        "secret_ref": "env:APPLIANCE_WEBHOOK_SECRET", "format": "json",
    }

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_WEBHOOK_NAMES:
            raise ValueError(f"{value!r} is reserved (/api/v1/webhooks/{value} lists the "
                             "deliveries); choose another name")
        return value

    @field_validator("events")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            repeated = sorted({e for e in value if value.count(e) > 1})
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return value


# ------------------------------------------------------------------ tokens
class TokenCreate(Body):
    name: Annotated[str, Field(pattern=TOKEN_NAME, max_length=100)]
    role: Literal["viewer", "operator", "admin"]
    expires_in: Annotated[
        Annotated[str, Field(pattern=EXPIRY, max_length=40,
                             json_schema_extra=documented(DOC_EXPIRY))] | None,
        Field(default=None, description=(
            "How long the token works, e.g. `30d`, `12h`, `1d12h` (1 minute to 3650 days); "
            "left out: it never expires."))]
    not_null: ClassVar[frozenset[str]] = frozenset({"expires_in"})
    example: ClassVar[dict[str, Any]] = {"name": "grafana", "role": "viewer",
                                         "expires_in": "90d"}


BODY_MODELS: Final[tuple[type[Body], ...]] = (
    ApplianceCreate, AppliancePatch, Selector, StrategyBody, PlanRequest, RolloutCreate,
    TokenCreate, WindowCreate, WindowPatch, SiteLimit, WebhookCreate,
)
