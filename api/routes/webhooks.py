"""/v1/webhooks: endpoints that hear of job events, signed as Standard Webhooks say.

The messages are written with the state changes they tell of and sent by the API's webhook
sender (``dispatch.webhooks``); these routes register, list and delete endpoints, show the
attempts made, and queue a ``ping``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from api.deps import CurrentOwner, ReadSessionDep, SessionDep, SettingsDep
from api.problems import ProblemError, field_error, invalid, problem
from api.schemas import (
    WEBHOOK_EXAMPLE,
    WEBHOOK_ID_PATTERN,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryPublic,
    WebhookMessagePublic,
    WebhookPublic,
)
from api.views import webhook_delivery_public, webhook_message_public, webhook_public
from dispatch.webhooks import literal_address_problem
from store import webhooks
from store.models import Webhook

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

WebhookId = Annotated[str, Path(pattern=WEBHOOK_ID_PATTERN, description="A webhook endpoint's id: 32 hex digits")]
NOT_FOUND = {404: problem("No such webhook endpoint for this token's owner")}


def webhook_links(webhook_id: str) -> dict:
    """OpenAPI links from a response that names an endpoint to the routes that take it."""
    path = {"webhook_id": webhook_id}
    base = "#/paths/~1v1~1webhooks~1{webhook_id}"
    return {
        "GetWebhook": {"operationRef": f"{base}/get", "parameters": path},
        "DeleteWebhook": {"operationRef": f"{base}/delete", "parameters": path},
        "WebhookDeliveries": {"operationRef": f"{base}~1deliveries/get", "parameters": path},
        "PingWebhook": {"operationRef": f"{base}~1test/post", "parameters": path},
    }


def _owned(session, webhook_id: str, owner: str) -> Webhook:
    webhook = webhooks.get_webhook(session, webhook_id, owner)
    if webhook is None:
        raise ProblemError(404, f"no webhook {webhook_id}; list yours with GET /v1/webhooks")
    return webhook


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    responses={
        201: {
            "description": "Registered; the secret is shown this once",
            "headers": {
                "Location": {"description": "The endpoint's URL", "required": True, "schema": {"type": "string"}}
            },
            "links": webhook_links("$response.body#/id"),
        },
        422: problem("The URL is not http(s), holds a user or password, or is a private address the service refuses"),
    },
    summary="Register a webhook endpoint; the answer holds its signing secret, shown this once",
    openapi_extra={"requestBody": {"content": {"application/json": {"example": WEBHOOK_EXAMPLE}}}},
)
def create_webhook(
    body: WebhookCreate, session: SessionDep, owner: CurrentOwner, settings: SettingsDep, response: Response
) -> WebhookCreated:
    if not settings.webhook_allow_private and (refused := literal_address_problem(body.url)):
        raise invalid([field_error(["body", "url"], refused)])
    webhook = webhooks.create_webhook(
        session, owner, url=body.url, description=body.description, events=body.events, jobs=body.jobs
    )
    response.headers["Location"] = f"{router.prefix}/{webhook.id}"
    return WebhookCreated(**webhook_public(webhook).model_dump(), secret=webhook.secret)


@router.get("", response_model=list[WebhookPublic], summary="Your webhook endpoints, oldest first (no secrets)")
def list_webhooks(session: ReadSessionDep, owner: CurrentOwner) -> list[WebhookPublic]:
    return [webhook_public(webhook) for webhook in webhooks.list_webhooks(session, owner)]


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=NOT_FOUND, summary="One of your endpoints")
def get_webhook(webhook_id: WebhookId, session: ReadSessionDep, owner: CurrentOwner) -> WebhookPublic:
    return webhook_public(_owned(session, webhook_id, owner))


@router.delete(
    "/{webhook_id}",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
    summary="Delete an endpoint: nothing more is sent to it, not even what was waiting, and its attempts go",
)
def delete_webhook(webhook_id: WebhookId, session: SessionDep, owner: CurrentOwner) -> Response:
    webhooks.delete_webhook(session, _owned(session, webhook_id, owner).id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=list[WebhookDeliveryPublic],
    responses=NOT_FOUND,
    summary="The endpoint's latest delivery attempts, newest first",
)
def list_deliveries(
    webhook_id: WebhookId,
    session: ReadSessionDep,
    owner: CurrentOwner,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[WebhookDeliveryPublic]:
    webhook = _owned(session, webhook_id, owner)
    return [webhook_delivery_public(d, m) for d, m in webhooks.list_deliveries(session, webhook.id, limit)]


@router.post(
    "/{webhook_id}/test",
    status_code=202,
    response_model=WebhookMessagePublic,
    responses=NOT_FOUND,
    summary="Queue a ping event to the endpoint; GET its deliveries to see how it went",
)
def ping_webhook(webhook_id: WebhookId, session: SessionDep, owner: CurrentOwner) -> WebhookMessagePublic:
    return webhook_message_public(webhooks.enqueue_ping(session, _owned(session, webhook_id, owner)))
