"""The notifier: sends the webhooks' deliveries (store/webhooks.py), at least once.

Every engine process runs one (`Notifier.run`, wired into the engine's background loops);
there is no leader. A round claims the deliveries that are due (`claim_deliveries`: at
most one per webhook, under a lease that counts as an attempt, SKIP LOCKED between
replicas), sends each as one HTTP POST and records the answer (`settle`):

- 2xx: delivered. No answer (connection refused, a timeout), 408, 429 and 5xx: pending
  again after an exponential back-off with full jitter (at least the receiver's
  Retry-After, at most `backoff_cap`), until `max_attempts` or `max_age_seconds`: then
  failed. Any other status (3xx included: redirects are never followed) fails at once.
- A secret reference that does not resolve fails the delivery, the error naming the
  reference (never the secret).
- A notifier that dies mid-request leaves its lease to run out: another replica (or the
  next start) sends the delivery again with the same event id (receivers drop repeats
  by `X-Orchestrator-Event-Id`).

Slow receivers: every request is bounded by `request_timeout` (connecting by
`connect_timeout`), well under the lease; `run` starts each request on its own and
claims again as soon as one ends, so a receiver that never answers holds one of the
`concurrency` slots and its own webhook's queue (one delivery at a time per webhook),
nothing else. Rollouts never wait for a webhook: events are written to the outbox in the
rollouts' transactions and sent from here.

Logs (`webhook_delivered`, `webhook_retry`, `webhook_failed`) name the webhook, the
event, the attempt and the status; a URL is shown as scheme://host[:port] only (a Slack
URL holds its token in the path), and no secret or signature is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit
from urllib.request import proxy_bypass

import aiohttp
import asyncpg
from aiohttp.helpers import ProxyInfo, proxies_from_env
from yarl import URL

from orchestrator import __version__
from orchestrator.appliance.credentials import CredentialsError, resolve_secret
from orchestrator.appliance.http import transport_error
from orchestrator.domain.inventory import TargetPolicy
from orchestrator.domain.notifications import (
    SIGNATURE_HEADER,
    Outcome,
    classify,
    envelope,
    parse_retry_after,
    retry_delay,
    sign,
    slack_message,
)
from orchestrator.logs import get_logger
from orchestrator.settings import setting_default
from orchestrator.store import webhooks as webhook_store
from orchestrator.store.webhooks import Outgoing

if TYPE_CHECKING:
    from orchestrator.settings import Settings

log = get_logger("orchestrator.engine.notifier")

USER_AGENT = f"fleet-orchestrator/{__version__}"
# the most of an answer's body kept (in last_error) when it is not 2xx: what Slack and
# most receivers say about a refused request fits
_ANSWER_SNIPPET = 300
# seconds `aclose` gives the leases of requests it cancels to be handed back
_RELEASE_TIMEOUT = 2.0



@dataclass(frozen=True)
class NotifierConfig:
    """How the notifier runs; `from_settings` builds it from the `webhook_*` settings.

    `lease_seconds` must leave room for a whole request (at least `request_timeout` + 1
    s): a lease that ran out while its request was still running would let another
    replica send the same delivery at the same time; None (the default):
    `max(60, 4 * request_timeout)`. `environ` replaces `os.environ` for `env:` secret
    references; `policy` is the settings' target policy
    (`orchestrator.inventory.target_policy`): secret references follow the rules of
    appliance credentials."""

    poll_interval: float = setting_default("webhook_poll_interval")
    lease_seconds: float | None = None
    concurrency: int = setting_default("webhook_concurrency")
    connect_timeout: float = setting_default("webhook_connect_timeout")
    request_timeout: float = setting_default("webhook_request_timeout")
    max_attempts: int = setting_default("webhook_max_attempts")
    max_age_seconds: float = setting_default("webhook_max_age")
    backoff_base: float = setting_default("webhook_backoff_base")
    backoff_cap: float = setting_default("webhook_backoff_cap")
    batch_seconds: float = setting_default("webhook_batch_seconds")
    # the most task.failed deliveries one request lists
    batch_max: int = 500
    # seconds a stopping notifier waits for the answers of requests already sent before it
    # cancels them and hands their deliveries back: a receiver that answers at once then
    # sees each event once, not again from the next notifier
    stop_grace: float = 2.0
    trust_env: bool = True
    environ: Mapping[str, str] | None = field(default=None, repr=False)
    policy: TargetPolicy = field(default_factory=TargetPolicy)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency: {self.concurrency} must be at least 1")
        if self.stop_grace < 0:
            raise ValueError(f"stop_grace: {self.stop_grace} must not be negative")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: {self.max_attempts} must be at least 1")
        if self.request_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("connect_timeout and request_timeout must be positive")
        if self.lease_seconds is None:
            object.__setattr__(self, "lease_seconds", max(60.0, 4 * self.request_timeout))
        elif self.lease_seconds < self.request_timeout + 1:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds:g}) must be at least request_timeout "
                f"+ 1 s ({self.request_timeout + 1:g}): a lease must outlast its request")

    @property
    def lease(self) -> float:
        """`lease_seconds`, its default applied."""
        return self.lease_seconds if self.lease_seconds is not None \
            else max(60.0, 4 * self.request_timeout)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> NotifierConfig:
        """The notifier's configuration from the settings (`webhook_*`, the appliance
        client's `appliance_trust_env` for proxies and the target policy for secret
        references); `overrides`: other fields to set."""
        from orchestrator.inventory import target_policy

        values: dict[str, Any] = {
            "poll_interval": settings.webhook_poll_interval,
            "lease_seconds": settings.webhook_lease_seconds,
            "concurrency": settings.webhook_concurrency,
            "connect_timeout": settings.webhook_connect_timeout,
            "request_timeout": settings.webhook_request_timeout,
            "max_attempts": settings.webhook_max_attempts,
            "max_age_seconds": settings.webhook_max_age,
            "backoff_base": settings.webhook_backoff_base,
            "backoff_cap": settings.webhook_backoff_cap,
            "batch_seconds": settings.webhook_batch_seconds,
            "trust_env": settings.appliance_trust_env,
            "policy": target_policy(settings),
        }
        values.update(overrides)
        return cls(**values)


def shown_url(url: str) -> str:
    """What a log line may show of a webhook URL: scheme://host[:port] (its path and
    query may hold a token, as Slack's do)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True)
class _Answer:
    status: int | None
    error: str | None
    retry_after: float | None = None


class Notifier:
    """Deliver webhook requests until cancelled (`run`), or one round (`deliver_once`).

    One aiohttp session for the notifier's life (made on first use; `aclose` closes it).
    Counters: `sent` (requests sent), `delivered`, `retried`, `failed` (deliveries
    settled so, a batch counting once)."""

    def __init__(
        self, pool: asyncpg.Pool, *, owner: str, config: NotifierConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.config = config or NotifierConfig()
        self.rng = rng or random.Random()
        self.sent = 0
        self.delivered = 0
        self.retried = 0
        self.failed = 0
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, ProxyInfo] = {}
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._timeout = aiohttp.ClientTimeout(
            total=self.config.request_timeout,
            sock_connect=min(self.config.connect_timeout, self.config.request_timeout))
        self._closed = False
        # set when a request ends (its webhook's next event may be due) or by `wake`
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def _start(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the notifier is closed")
        if self._session is None:
            # as the appliance client does: the environment's proxies are read once, and
            # aiohttp's own trust_env (a proxy lookup and ~/.netrc on every request) is off
            self._proxies = proxies_from_env() if self.config.trust_env else {}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.concurrency * 2,
                                               ttl_dns_cache=300),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
                raise_for_status=False,
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session (the requests of `run` end with it); idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ------------------------------------------------------------------ the loop
    def wake(self) -> None:
        """Look for due deliveries now rather than after `poll_interval` (for example on
        the engine's NOTIFY: a transaction wrote events)."""
        self._wake.set()

    async def run(self) -> None:
        """Send deliveries until cancelled. Each claimed request runs on its own task; the
        loop claims again when one ends (the webhook's next event may be due at once) or
        after `poll_interval` seconds. A database error is logged and tried again after
        `poll_interval`. When cancelled, the requests still in flight get `stop_grace`
        seconds to be answered and settled; those still unanswered are cancelled and their
        leases handed back (best effort, so that another replica sends them now rather
        than when the lease runs out)."""
        self._start()
        log.info("notifier_started", owner=self.owner, concurrency=self.config.concurrency)
        in_flight: dict[asyncio.Task[bool], Outgoing] = {}
        wake = self._wake
        failing = False  # the claims fail (logged once, then at debug level)

        def done(task: asyncio.Task[bool]) -> None:
            in_flight.pop(task, None)
            wake.set()

        try:
            while True:
                wake.clear()
                free = self.config.concurrency - len(in_flight)
                claimed: list[Outgoing] = []
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                    except Exception as exc:  # the database down, a statement timeout
                        (log.debug if failing else log.warning)(
                            "notifier_claim_failed", error=_error_text(exc),
                            retry_in=self.config.poll_interval)
                        failing = True
                    else:
                        if failing:
                            log.info("notifier_claim_recovered")
                        failing = False
                for out in claimed:
                    task = asyncio.create_task(self._deliver(out),
                                               name=f"webhook-{out.webhook}")
                    in_flight[task] = out
                    task.add_done_callback(done)
                if claimed and len(claimed) == free:
                    await wake.wait()  # every slot busy: claim again once one frees
                    continue
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a
                # cancellation that arrives as the event is set (a request ending), and
                # the loop would outlive its cancel
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.poll_interval):
                        await wake.wait()
        finally:
            await self._abandon(in_flight)

    async def _abandon(self, in_flight: dict[asyncio.Task[bool], Outgoing]) -> None:
        """Let the requests in flight be answered and settled for up to `stop_grace`
        seconds, cancel those still running, and hand back every lease this notifier
        holds (pending again, due now). A cancelled request may have reached its
        receiver, which then sees it twice, with the same event id. The hand-back is by
        owner, not by the requests in flight: a claim cancelled while it committed took
        leases whose answer the loop never saw, and they would otherwise wait for their
        lease to run out (`webhook_lease_seconds`)."""
        tasks = set(in_flight)
        if tasks and self.config.stop_grace > 0:
            _, tasks = await asyncio.wait(tasks, timeout=self.config.stop_grace)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_RELEASE_TIMEOUT):
                await webhook_store.release_leases(
                    self.pool, self.owner, error="the notifier stopped before the answer")

    async def deliver_once(self) -> int:
        """One round: claim what is due (up to `concurrency` requests), send them all at
        once and settle each. Returns how many requests were sent. A database error of
        the claim is raised; one of a settle is logged (the lease runs out and the
        delivery is sent again)."""
        self._start()
        claimed = await self._claim(self.config.concurrency)
        if not claimed:
            return 0
        results = await asyncio.gather(*(self._deliver(out) for out in claimed))
        return sum(results)

    async def _claim(self, limit: int) -> list[Outgoing]:
        return await webhook_store.claim_deliveries(
            self.pool, owner=self.owner, lease_seconds=self.config.lease,
            limit=limit, batch_seconds=self.config.batch_seconds,
            batch_max=self.config.batch_max)

    # ------------------------------------------------------------------ one request
    async def _deliver(self, out: Outgoing) -> bool:
        """Send one claimed request and settle it; True when a request was sent. Never
        raises but CancelledError: anything unexpected is logged, and the lease left to
        run out (the delivery is sent again then)."""
        try:
            return await self._send(out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("webhook_send_error", webhook=out.webhook, event_type=out.event_type,
                      event_id=out.event_id, attempt=out.attempts, error=_error_text(exc))
            return False

    async def _send(self, out: Outgoing) -> bool:
        async with self._slots:
            fields = {"webhook": out.webhook, "event_type": out.event_type,
                      "event_id": out.event_id, "attempt": out.attempts,
                      "deliveries": len(out.ids)}
            secret: str | None = None
            if out.secret_ref:
                try:
                    secret = resolve_secret(out.secret_ref, environ=self.config.environ,
                                            policy=self.config.policy)
                except CredentialsError as exc:
                    await self._settle(out, "failed", None, f"cannot sign: {exc}", None,
                                       fields)
                    return False
            payload: dict[str, Any] = envelope(out.events, attempt=out.attempts)
            if out.format == "slack":
                payload = dict(slack_message(payload))
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
                              default=str).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Orchestrator-Event-Id": str(out.event_id),
                "X-Orchestrator-Event": out.event_type,
                "X-Orchestrator-Delivery": str(out.ids[0]),
                "X-Orchestrator-Attempt": str(out.attempts),
            }
            if secret is not None:
                headers[SIGNATURE_HEADER] = sign(secret.encode(), int(time.time()), body)
            answer = await self._post(out, body, headers)
            self.sent += 1
            outcome: Outcome = classify(answer.status, answer.error)
            retry_in: float | None = None
            error: str | None = answer.error
            if outcome == "retry":
                age = (datetime.now(UTC) - out.first_created_at).total_seconds()
                if out.attempts >= self.config.max_attempts:
                    outcome = "failed"
                    error = f"{error or 'retryable answer'}; gave up after {out.attempts} " \
                            f"attempt(s) (max_attempts {self.config.max_attempts})"
                elif age >= self.config.max_age_seconds:
                    outcome = "failed"
                    error = f"{error or 'retryable answer'}; gave up: the delivery is " \
                            f"{age:.0f} s old (max_age {self.config.max_age_seconds:g} s)"
                else:
                    retry_in = retry_delay(out.attempts, self.config.backoff_base,
                                           self.config.backoff_cap, self.rng,
                                           answer.retry_after)
            await self._settle(out, outcome, answer.status, error, retry_in, fields)
            return True

    async def _post(self, out: Outgoing, body: bytes, headers: dict[str, str]) -> _Answer:
        session = self._start()
        proxy, proxy_auth = self._proxy_for(out.url)
        try:
            async with session.post(
                out.url, data=body, headers=headers, allow_redirects=False,
                timeout=self._timeout, proxy=proxy,
                proxy_headers={"Proxy-Authorization": proxy_auth} if proxy_auth else None,
            ) as resp:
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"),
                                                datetime.now(UTC))
                error: str | None = None
                if not 200 <= status <= 299:
                    error = f"HTTP {status}"
                    try:  # what the receiver says about it, if it says it in time
                        snippet = _snippet(await resp.content.read(_ANSWER_SNIPPET))
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        snippet = ""
                    if 300 <= status <= 399:
                        error += " (redirects are not followed: fix the webhook's URL)"
                    if snippet:
                        error += f": {snippet}"
                return _Answer(status, error, retry_after)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {self.config.request_timeout:g} s"
            else:
                reason = transport_error(exc, out.webhook, "POST",
                                         timeout=self.config.request_timeout,
                                         proxy=proxy).detail
            return _Answer(None, reason.removeprefix("POST: "))

    def _proxy_for(self, url: str) -> tuple[URL | None, str | None]:
        """The proxy of this URL from the environment (as `ApplianceHttp.proxy_for`), and
        its Proxy-Authorization header; (None, None) to reach it directly."""
        parts = urlsplit(url)
        info = self._proxies.get(parts.scheme)
        if info is None or (parts.hostname and proxy_bypass(parts.hostname)):
            return None, None
        auth = info.proxy_auth.encode() if info.proxy_auth is not None else None
        return info.proxy, auth

    async def _settle(self, out: Outgoing, outcome: Outcome, status: int | None,
                      error: str | None, retry_in: float | None,
                      fields: dict[str, Any]) -> None:
        try:
            settled = await webhook_store.settle(
                self.pool, out.ids, owner=self.owner, outcome=outcome, status=status,
                error=error, retry_in=retry_in)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("webhook_settle_failed", **fields, outcome=outcome,
                        error=_error_text(exc), url=shown_url(out.url))
            return
        if settled == 0:
            # the lease ran out and another replica holds the delivery now
            log.warning("webhook_lease_lost", **fields, outcome=outcome)
            return
        if outcome == "delivered":
            self.delivered += 1
            log.info("webhook_delivered", **fields, status=status)
        elif outcome == "retry":
            self.retried += 1
            log.info("webhook_retry", **fields, status=status, error=error,
                     retry_in=round(retry_in or 0.0, 3), url=shown_url(out.url))
        else:
            self.failed += 1
            log.warning("webhook_failed", **fields, status=status, error=error,
                        url=shown_url(out.url))


def _snippet(data: bytes) -> str:
    """The start of an answer's body, one printable line."""
    text = data.decode("utf-8", errors="replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:_ANSWER_SNIPPET]


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


__all__ = ["USER_AGENT", "Notifier", "NotifierConfig", "shown_url"]
