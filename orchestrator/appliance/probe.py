"""The HTTP probe of the health gates (orchestrator/domain/gates.py): one GET of a probe URL,
through the process's one aiohttp session (`ApplianceHttp`: its connection pool, proxies of
the environment, timeouts), no credentials sent, redirects not followed, the answer's body
read up to `BODY_READ` characters. A URL on the appliance's own host is trusted as the
appliance is (its pinned thumbprint or CA file); another host as the settings say
(`appliance_verify_tls`). Nothing here logs or returns the URL's query.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp

from orchestrator.appliance.errors import ApplianceError
from orchestrator.appliance.http import ApplianceHttp, ApplianceTarget, SslSetting, transport_error
from orchestrator.domain.gates import BODY_READ, ProbeResult, shown_url


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return ""


async def http_probe(
    http: ApplianceHttp, target: ApplianceTarget, url: str, *, seconds: float
) -> ProbeResult:
    """One try of the probe `url` for the appliance `target`, within `seconds`: its status
    and the start of its body, or no status and why (a transport failure, a TLS refusal,
    the timeout)."""
    op = f"probe {shown_url(url)}"
    same_host = _host(url) == _host(target.base_url)
    # the proxy of the probe's own scheme and host (`proxy_for` reads only those)
    where = ApplianceTarget(target.name, url.split("?", 1)[0],
                            tls_ca_file=target.tls_ca_file if same_host else None,
                            tls_thumbprint=target.tls_thumbprint if same_host else None)
    proxy, proxy_auth = http.proxy_for(where)
    try:
        ssl: SslSetting = http.ssl_for(where)
    except ApplianceError as exc:
        return ProbeResult(None, error=str(exc))
    try:
        async with http.session.get(
            url, ssl=ssl, timeout=http.client_timeout(seconds), allow_redirects=False,
            proxy=proxy, proxy_headers={"Proxy-Authorization": proxy_auth} if proxy_auth else None,
        ) as resp:
            raw = await resp.content.read(BODY_READ)
            return ProbeResult(resp.status, raw.decode("utf-8", errors="replace"))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        error = transport_error(exc, target.name, op, timeout=seconds, proxy=proxy)
        return ProbeResult(None, error=str(error))
