"""`flowhooks token create`: the first token of a workspace, before any token exists
to call the API with. Prints the secret once."""

from datetime import datetime

from services.auth.app import DATABASE
from services.auth.store import AccessToken, AuthStore
from services.auth.tokens_api import DISPLAY_PREFIX_LENGTH
from shared.api_auth import KNOWN_SCOPES
from shared.bearer import hash_token, new_personal_token
from shared.db import create_pool, ensure_database, migrate


async def create_token(
    database_url: str,
    workspace: str,
    scopes: list[str],
    name: str,
    expires_at: datetime | None,
) -> tuple[AccessToken, str]:
    unknown = sorted(set(scopes) - KNOWN_SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; known: {sorted(KNOWN_SCOPES)}")
    await ensure_database(database_url)
    await migrate(database_url, DATABASE.schema, DATABASE.migrations)
    pool = await create_pool(database_url, 1)
    try:
        store = AuthStore(pool)
        workspace_id = await store.ensure_workspace(workspace)
        secret = new_personal_token()
        token = await store.create_token(
            workspace_id,
            name,
            hash_token(secret),
            secret[:DISPLAY_PREFIX_LENGTH],
            sorted(set(scopes)),
            expires_at,
        )
        return token, secret
    finally:
        await pool.close()
