"""Signing secrets of a flow (`webhook.auth.secrets`) on their way in and out of the
flows API: sealed before they are stored (shared/secret_box.py), shown only as hints.

What a save may send in `secrets`:
- a new secret: sealed with the ring's current key;
- the hint of a secret the flow holds (`"…abcd"`, what GET shows): that secret is kept,
  so a definition read with GET can be saved back unchanged, and rotating is
  `["…abcd", "<new secret>"]` then `["<new secret>"]`;
- the stored form of a secret the flow holds (what a PATCH merges in): kept as is.

The completion callback's secret (`webhook.callback.secret`) is handled the same way,
one secret instead of a list: the runner signs callbacks with it, so it must be
recoverable too, and it is never shown again (GET: its hint).
"""

from typing import Any

from services.runner.definition import (
    HINT_MARK,
    LEARNED_SECRET_MODES,
    FlowDefinition,
    SealedSecret,
)
from shared.errors import BadRequest
from shared.secret_box import SecretBox


def hint(secret: str) -> str:
    return HINT_MARK + secret[-4:]


def held_secrets(stored_webhook: dict[str, Any] | None) -> list[SealedSecret]:
    auth = (stored_webhook or {}).get("auth") or {}
    return [
        SealedSecret.model_validate(item)
        for item in auth.get("secrets", [])
        if isinstance(item, dict)
    ]


def keep_learned_secret(definition: FlowDefinition, stored_webhook: dict[str, Any] | None) -> None:
    """`asana`: a save that leaves `secrets` out keeps the secret the flow learned from
    its handshake (the operator never knows it, so a definition from a file cannot
    carry it); only `"secrets": []` given clears it, which re-arms the flow. In place."""
    auth = definition.webhook.auth
    if auth is None or auth.mode not in LEARNED_SECRET_MODES:
        return
    stored_auth = (stored_webhook or {}).get("auth") or {}
    if "secrets" in auth.model_fields_set or stored_auth.get("mode") != auth.mode:
        return
    auth.secrets = list(held_secrets(stored_webhook))


def seal_secrets(
    definition: FlowDefinition,
    held: list[SealedSecret],
    box: SecretBox | None,
    workspace_id: str,
) -> None:
    """Replace the definition's secrets by their stored form, in place."""
    auth = definition.webhook.auth
    if auth is None or not auth.secrets:
        return
    if box is None:
        raise BadRequest(
            "webhook.auth: signing modes are not available: the runner has no"
            " FLOWHOOKS_WEBHOOK_SECRETS_KEY",
            data={"field": "webhook.auth"},
        )
    sealed: list[str | SealedSecret] = []
    for index, secret in enumerate(auth.secrets):
        field = f"webhook.auth.secrets[{index}]"
        if isinstance(secret, SealedSecret):
            if secret not in held:
                raise BadRequest(f"{field}: not a secret of this flow", data={"field": field})
            sealed.append(secret)
        elif secret.startswith(HINT_MARK):
            matches = [item for item in held if item.hint == secret]
            if len(matches) != 1:
                raise BadRequest(
                    f"{field}: {secret!r} names no secret this flow holds (or two of"
                    " them); send the secret itself",
                    data={"field": field},
                )
            sealed.append(matches[0])
        else:
            sealed.append(SealedSecret(sealed=box.seal(secret, workspace_id), hint=hint(secret)))
    auth.secrets = sealed


def held_callback_secret(stored_webhook: dict[str, Any] | None) -> SealedSecret | None:
    callback = (stored_webhook or {}).get("callback") or {}
    secret = callback.get("secret") if isinstance(callback, dict) else None
    return SealedSecret.model_validate(secret) if isinstance(secret, dict) else None


def seal_callback_secret(
    definition: FlowDefinition,
    held: SealedSecret | None,
    box: SecretBox | None,
    workspace_id: str,
) -> None:
    """Replace the callback's secret by its stored form, in place."""
    callback = definition.webhook.callback
    if callback is None:
        return
    field = "webhook.callback.secret"
    if box is None:
        raise BadRequest(
            "webhook.callback: callbacks are not available: the runner has no"
            " FLOWHOOKS_WEBHOOK_SECRETS_KEY",
            data={"field": "webhook.callback"},
        )
    callback.secret = _stored_one(
        callback.secret, held, box, workspace_id, field, "secret", "the secret itself"
    )


def _stored_one(
    given: str | SealedSecret,
    held: SealedSecret | None,
    box: SecretBox,
    workspace_id: str,
    field: str,
    what: str,
    send: str,
) -> SealedSecret:
    """One secret of a flow (a callback's, `meta`'s verify token) as it is stored: the
    one held (given back sealed, or named by its hint), or the new one sealed."""
    if isinstance(given, SealedSecret):
        if given != held:
            raise BadRequest(f"{field}: not the {what} of this flow", data={"field": field})
        return given
    if given.startswith(HINT_MARK):
        if held is None or held.hint != given:
            raise BadRequest(
                f"{field}: {given!r} names no {what} this flow holds; send {send}",
                data={"field": field},
            )
        return held
    return SealedSecret(sealed=box.seal(given, workspace_id), hint=hint(given))


def held_verify_token(stored_webhook: dict[str, Any] | None) -> SealedSecret | None:
    """`meta`'s verify token as the flow holds it (sealed), if any."""
    auth = (stored_webhook or {}).get("auth") or {}
    token = auth.get("verify_token") if isinstance(auth, dict) else None
    return SealedSecret.model_validate(token) if isinstance(token, dict) else None


def seal_verify_token(
    definition: FlowDefinition,
    held: SealedSecret | None,
    box: SecretBox | None,
    workspace_id: str,
) -> None:
    """Replace `meta`'s verify token by its stored form, in place: a secret like the
    others (anyone who knows it may answer Meta's handshake as this flow)."""
    auth = definition.webhook.auth
    if auth is None or auth.verify_token is None:
        return
    field = "webhook.auth.verify_token"
    if box is None:
        raise BadRequest(
            "webhook.auth: signing modes are not available: the runner has no"
            " FLOWHOOKS_WEBHOOK_SECRETS_KEY",
            data={"field": "webhook.auth"},
        )
    auth.verify_token = _stored_one(
        auth.verify_token, held, box, workspace_id, field, "verify token", "the token itself"
    )


def public_webhook(stored_webhook: dict[str, Any]) -> dict[str, Any]:
    """The webhook settings as the API shows them: secrets as hints only."""
    auth = stored_webhook.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("verify_token"), dict):
        shown_token = auth["verify_token"].get("hint", HINT_MARK)
        stored_webhook = {**stored_webhook, "auth": {**auth, "verify_token": shown_token}}
    callback = stored_webhook.get("callback")
    if isinstance(callback, dict) and isinstance(callback.get("secret"), dict):
        shown = callback["secret"].get("hint", HINT_MARK)
        stored_webhook = {**stored_webhook, "callback": {**callback, "secret": shown}}
    auth = stored_webhook.get("auth")
    if not isinstance(auth, dict) or not auth.get("secrets"):
        return stored_webhook
    hints = [
        item.get("hint", HINT_MARK) if isinstance(item, dict) else HINT_MARK
        for item in auth["secrets"]
    ]
    return {**stored_webhook, "auth": {**auth, "secrets": hints}}
