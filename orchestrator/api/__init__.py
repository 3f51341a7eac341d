"""The REST API (aiohttp): `create_app` in app.py, one module of routes per resource
(appliances, rollouts, tasks, events, audit, tokens, health), auth.py (bearer tokens and
roles), problems.py (RFC 9457 errors), validation.py and models.py (parameters and bodies),
openapi.py (the document and /api/docs), metrics.py (Prometheus), server.py and cli.py
(`orchestrator serve`, `orchestrator tokens`). See docs/api.md."""
