"""`/api/v1/webhooks`: notification receivers and their deliveries (admin only, reads too:
a webhook's URL and secret reference say where the fleet's events go).

Every operation goes through the same store functions as `orchestrator webhooks`
(`store.webhooks`), which check every value (`WebhookError` names the field, answered as
`body.<field>` or the parameter) and write the audit row in the same transaction. A
webhook's secret is never stored, only its reference; answers show the URL without its
query string (a receiver's token may be in it).

`/api/v1/webhooks/deliveries` is a path of its own: the `{name}` routes do not match it
(and no webhook may be named `deliveries`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

from orchestrator.api.models import RESERVED_WEBHOOK_NAMES, WEBHOOK_NAME, WebhookCreate
from orchestrator.api.problems import FieldError, Problem
from orchestrator.api.routing import Call, Operation, Resp, json_response
from orchestrator.api.validation import BIGINT_MAX, Param, limit_param, read_model, read_no_body
from orchestrator.inventory import target_policy
from orchestrator.store import webhooks as webhook_store
from orchestrator.store.webhooks import (
    DELIVERY_STATES,
    WebhookError,
    WebhookNotFound,
)

BASE: Final = "/api/v1/webhooks"
NAME_PARAM: Final = Param("name", "path", pattern=WEBHOOK_NAME, max_length=63,
                          description="The webhook's name.")
DELIVERY_PARAM: Final = Param("id", "path", "integer", minimum=1, maximum=BIGINT_MAX,
                              description="The delivery's id.")
# the body fields of WebhookCreate, by the store's field names
_BODY_FIELDS: Final = {"rollout": "body.rollout_id"}




@dataclass(frozen=True)
class _NamedOperation(Operation):
    """An operation on `/api/v1/webhooks/{name}...`: its `{name}` never matches
    `deliveries`, so `/api/v1/webhooks/deliveries` is answered by its own routes only (405
    with their methods for any other)."""

    def route_path(self) -> str:
        excluded = "|".join(sorted(RESERVED_WEBHOOK_NAMES))
        return super().route_path().replace(
            "{name}", f"{{name:(?!(?:{excluded})$)[^{{}}/]+}}")


def _problem(exc: WebhookError) -> Problem:
    """A store refusal as a problem: 404 naming the path parameter for what does not
    exist, else 422 naming the body field."""
    if isinstance(exc, WebhookNotFound):
        where = "id" if exc.field == "delivery" else "name"
        return Problem(404, exc.message, errors=[FieldError(where, exc.message)])
    field = _BODY_FIELDS.get(exc.field, f"body.{exc.field}")
    return Problem(422, exc.message, errors=[FieldError(field, exc.message)])


async def list_webhooks(call: Call) -> web.StreamResponse:
    items = await webhook_store.list_webhooks(call.pool)
    return json_response({"items": [h.to_dict() for h in items]})


async def create_webhook(call: Call) -> web.StreamResponse:
    body = await read_model(call.request, WebhookCreate)
    try:
        hook = await webhook_store.add_webhook(
            call.pool, name=body.name, url=body.url, actor=call.actor,
            events=body.events, rollout_id=body.rollout_id, site=body.site,
            secret_ref=body.secret_ref, format=body.format,
            policy=target_policy(call.state.settings))
    except WebhookError as exc:
        if exc.field in ("name", "rollout"):
            # the body is valid; the state of things refuses it: the name is taken (its
            # pattern was checked), or the rollout it names does not exist (any more)
            field = _BODY_FIELDS.get(exc.field, f"body.{exc.field}")
            raise Problem(409, exc.message, errors=[FieldError(field, exc.message)]) from None
        raise _problem(exc) from None
    return json_response(hook.to_dict(), 201, {"Location": f"{BASE}/{hook.name}"})


async def get_webhook(call: Call) -> web.StreamResponse:
    try:
        hook = await webhook_store.get_webhook(call.pool, call.params["name"])
    except WebhookError as exc:
        raise _problem(exc) from None
    return json_response(hook.to_dict())


async def delete_webhook(call: Call) -> web.StreamResponse:
    try:
        await webhook_store.remove_webhook(call.pool, call.params["name"], call.actor)
    except WebhookError as exc:
        raise _problem(exc) from None
    return web.Response(status=204)


async def ping_webhook(call: Call) -> web.StreamResponse:
    await read_no_body(call.request)
    try:
        delivery = await webhook_store.ping(call.pool, call.params["name"], call.actor)
    except WebhookError as exc:
        raise _problem(exc) from None
    return json_response(delivery.to_dict(), 202)


async def list_deliveries(call: Call) -> web.StreamResponse:
    p = call.params
    try:
        items = await webhook_store.list_deliveries(
            call.pool, webhook=p["webhook"], state=p["state"], rollout_id=p["rollout_id"],
            limit=p["limit"])
    except WebhookNotFound as exc:
        raise Problem(404, exc.message,
                      errors=[FieldError("query parameter webhook", exc.message)]) from None
    except WebhookError as exc:
        raise Problem(400, exc.message, errors=[FieldError(f"query parameter {exc.field}",
                                                           exc.message)]) from None
    return json_response({"items": [d.to_dict() for d in items]})


async def redeliver(call: Call) -> web.StreamResponse:
    await read_no_body(call.request)
    try:
        delivery = await webhook_store.redeliver(call.pool, call.params["id"], call.actor)
    except WebhookNotFound as exc:
        raise _problem(exc) from None
    except WebhookError as exc:  # pending already: on its way
        raise Problem(409, exc.message, errors=[FieldError("id", exc.message)]) from None
    return json_response(delivery.to_dict())


_WEBHOOK_LINKS: Final = tuple((op_id, "name", "$response.body#/name")
                              for op_id in ("getWebhook", "testWebhook", "deleteWebhook"))

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "GET", BASE, list_webhooks, "listWebhooks", "List webhooks", "webhooks", "admin",
        responses={200: Resp("Every webhook, by name, with its deliveries by state.",
                             "WebhookList")},
    ),
    Operation(
        "POST", BASE, create_webhook, "createWebhook", "Add a webhook", "webhooks", "admin",
        body=WebhookCreate,
        responses={201: Resp("Added.", "Webhook", headers=("Location",),
                             links=_WEBHOOK_LINKS)},
        errors=(409,),
        description="Same rules as `orchestrator webhooks add`: 422 names the bad field (a "
                    "URL without a host or with user:password@, a `secret_ref` the "
                    "settings do not allow); 409 when the name is taken or `rollout_id` "
                    "names a rollout that does not exist. Without `events` it receives "
                    "every event.",
    ),
    Operation(
        "GET", f"{BASE}/deliveries", list_deliveries, "listWebhookDeliveries",
        "List webhook deliveries", "webhooks", "admin",
        params=(Param("webhook", "query", pattern=WEBHOOK_NAME, max_length=63,
                      description="Only this webhook's deliveries (404 if it does not "
                                  "exist)."),
                Param("state", "query", enum=DELIVERY_STATES,
                      description="Only deliveries in this state."),
                Param("rollout_id", "query", "integer", minimum=1, maximum=BIGINT_MAX,
                      description="Only deliveries of this rollout's events."),
                limit_param(default=100, maximum=1000)),
        responses={200: Resp("The newest deliveries first.", "WebhookDeliveryList")},
        errors=(404,),
    ),
    Operation(
        "POST", f"{BASE}/deliveries/{{id}}/redeliver", redeliver, "redeliverWebhookDelivery",
        "Send a delivery again", "webhooks", "admin", params=(DELIVERY_PARAM,),
        responses={200: Resp("Pending again, due now, with the same event id.",
                             "WebhookDelivery")},
        errors=(409,),
        description="A failed (or delivered) delivery becomes pending again, due at once, "
                    "with the same event id (receivers drop repeats by it); an engine sends "
                    "it. 409 when it is pending already.",
    ),
    _NamedOperation(
        "GET", f"{BASE}/{{name}}", get_webhook, "getWebhook", "Get a webhook", "webhooks",
        "admin", params=(NAME_PARAM,),
        responses={200: Resp("The webhook with its deliveries by state.", "Webhook")},
    ),
    _NamedOperation(
        "DELETE", f"{BASE}/{{name}}", delete_webhook, "deleteWebhook", "Remove a webhook",
        "webhooks", "admin", params=(NAME_PARAM,),
        responses={204: Resp("Removed, with its deliveries (pending ones are never "
                             "sent).")},
    ),
    _NamedOperation(
        "POST", f"{BASE}/{{name}}/test", ping_webhook, "testWebhook",
        "Queue a ping for a webhook", "webhooks", "admin", params=(NAME_PARAM,),
        responses={202: Resp("Queued: the ping's delivery, pending; an engine sends it.",
                             "WebhookDelivery",
                             links=(("redeliverWebhookDelivery", "id", "$response.body#/id"),))},
        description="Writes a `ping` event for this webhook only (whatever its filters); "
                    "an engine (`orchestrator run` or `serve`) sends it. Follow it with "
                    "`GET /api/v1/webhooks/deliveries?webhook={name}`.",
    ),
)
