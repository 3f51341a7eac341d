"""`/api/v1/sites`: the fleet-wide capacity of each site (viewer reads; admin writes, as for
the inventory: the limit decides how many installs may run at a site at once).

Every write goes through the same store function as `orchestrator sites set-limit`
(`store.sites.set_site_limit`), with its audit row in the same transaction.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from orchestrator.api.models import TEXT, SiteLimit
from orchestrator.api.problems import FieldError, Problem
from orchestrator.api.routing import Call, Operation, Resp, json_response
from orchestrator.api.validation import Param, read_model
from orchestrator.store import sites as site_store
from orchestrator.store.sites import SiteError, SiteNotFound

SITE_PARAM: Final = Param("name", "path", pattern=TEXT, max_length=site_store.MAX_NAME,
                          description="The site's name.")


def _problem(exc: SiteError) -> Problem:
    if isinstance(exc, SiteNotFound):
        return Problem(404, exc.message, errors=[FieldError("name", exc.message)])
    field = "name" if exc.field == "site" else f"body.{exc.field}"
    return Problem(422, exc.message, errors=[FieldError(field, exc.message)])


async def list_sites(call: Call) -> web.StreamResponse:
    items = await site_store.list_sites(call.pool)
    return json_response({"items": [s.to_dict() for s in items]})


async def set_site_limit(call: Call) -> web.StreamResponse:
    body = await read_model(call.request, SiteLimit)
    try:
        site = await site_store.set_site_limit(call.pool, call.params["name"],
                                               body.max_in_flight, call.actor)
    except SiteError as exc:
        raise _problem(exc) from None
    return json_response(site.to_dict())


OPERATIONS: Final = (
    Operation(
        "GET", "/api/v1/sites", list_sites, "listSites", "List sites with their limits",
        "sites", "viewer",
        responses={200: Resp("Every site (of the inventory, or with a limit set), by name: "
                             "its limit, installs in flight now and appliances.",
                             "SiteList")},
    ),
    Operation(
        "PUT", "/api/v1/sites/{name}", set_site_limit, "setSiteLimit",
        "Set or clear a site's fleet-wide limit", "sites", "admin",
        params=(SITE_PARAM,), body=SiteLimit,
        responses={200: Resp("The site after the change.", "Site")},
        description="`max_in_flight` caps the installs in flight at the site across every "
                    "rollout together (each rollout's `per_site_concurrency` still "
                    "applies); `null` clears it (unlimited). Same rules as `orchestrator "
                    "sites set-limit`: 404 when no appliance is at the site and it has no "
                    "limit row; 422 names a bad value.",
    ),
)
