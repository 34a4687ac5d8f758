"""The webhook's OpenAPI operations (shared/openapi.py). A flow's input is any body
(JSON, form, XML, text: `normalise.py`), so it is documented as any JSON here; the
answer is the flow's own, any status and type, except errors (the envelope)."""

from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.openapi import AnyJson, Operation

TAGS = ("webhook",)
SECURITY = (
    "The flow's webhook token as a bearer (`GET /v1/flows/{id}/webhook` on the runner), "
    "or the signature its `webhook.auth` mode names."
)


class Accepted(BaseModel):
    """Accepted, not finished: `data.status_url` tells how it ends"""

    model_config = ConfigDict(extra="allow")

    status: int
    message: str
    data: dict[str, Any]


def call(method: str) -> Operation:
    return Operation(
        f"Run the flow ({method})",
        {202: Accepted, "default": AnyJson},
        body=None if method == "GET" else AnyJson,
        body_required=False,
        response_media="*/*",
        description=f"{SECURITY} A GET's input is its query string.",
        tags=TAGS,
    )


STATUS = Operation(
    "A run's status: 202 while queued or running, then the run's own answer",
    {202: Accepted, "default": AnyJson},
    response_media="*/*",
    description=SECURITY,
    tags=TAGS,
)
