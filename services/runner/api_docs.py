"""The flows API's OpenAPI operations (shared/openapi.py): bodies are `FlowDefinition`,
the model `parse_definition` validates with (each step by its type's own model); the
answers' models describe `FlowRow.public()` and `FlowsApi.webhook_info`."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.runner.definition import FlowDefinition
from services.runner.flows_api import MAX_PAGE
from shared.openapi import NoContent, Operation, Page
from shared.schemas.access import FlowStatus

TAGS = ("flows",)


class FlowView(BaseModel):
    """A flow as stored (signing secrets shown as hints)"""

    id: str
    workspace_id: str
    name: str
    status: FlowStatus
    webhook: dict[str, Any]
    steps: list[Any]
    version: int
    created_at: datetime
    updated_at: datetime


class FlowList(Page):
    """The workspace's flows, oldest first"""

    items: list[FlowView]


class WebhookInfo(BaseModel):
    """Where and how to call the flow's webhook"""

    model_config = ConfigDict(populate_by_name=True)

    url: str
    token: str
    is_async: bool = Field(alias="async")


class FlowListQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=MAX_PAGE, description="Page size")
    cursor: str | None = Field(default=None, description="`next_cursor` of the previous page")


CREATE = Operation("Create a flow", {201: FlowView}, body=FlowDefinition, tags=TAGS)
LIST = Operation("List flows", {200: FlowList}, query=FlowListQuery, tags=TAGS)
GET = Operation("Read a flow", {200: FlowView}, tags=TAGS)
REPLACE = Operation("Replace a flow", {200: FlowView}, body=FlowDefinition, tags=TAGS)
PATCH = Operation(
    "Change some of a flow's fields",
    {200: FlowView},
    body=FlowDefinition,
    partial=True,
    description="Top-level fields replace the stored ones; `webhook` is merged field by field.",
    tags=TAGS,
)
DELETE = Operation("Delete a flow", {204: NoContent}, tags=TAGS)
WEBHOOK = Operation("The flow's webhook URL and token", {200: WebhookInfo}, tags=TAGS)
ROTATE_TOKEN = Operation(
    "Issue a new webhook token (the previous one stops working)", {200: WebhookInfo}, tags=TAGS
)
