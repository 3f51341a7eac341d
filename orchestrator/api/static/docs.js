// /api/docs: Swagger UI (its files come from the swagger-ui-py wheel, served by the
// orchestrator itself: nothing is loaded from the network) over /api/v1/openapi.json.
// "Authorize" takes a bearer token; Swagger UI keeps it in this page's memory only (not in
// a URL, a cookie or localStorage: persistAuthorization is off) and sends it with "Try it
// out". validatorUrl is null: the default would send the document to validator.swagger.io.
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    persistAuthorization: false,
    validatorUrl: null,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0,
    docExpansion: "list",
    filter: true,
  });
});
