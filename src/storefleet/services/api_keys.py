"""Each store's API key: the credential its own backend requires for its orders API and its
websocket. A per-store secret like its database password (generated here, encrypted at rest,
handed to the backend as a file); shown in the create answer, readable by the store's own token
and by operators, and rotatable: the running backend reads the new key from its file, with no
restart."""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from storefleet.runtime.base import API_KEY
from storefleet.services.steps import Toolkit

log = logging.getLogger(__name__)


class ApiKeyView(BaseModel):
    store_id: str
    api_key: str = Field(description="Send it to the store's backend as `X-Api-Key`.")


class ApiKeyService:
    def __init__(self, kit: Toolkit) -> None:
        self.kit = kit

    def issue(self, store_id: str) -> str:
        """The store's key, made now if it has none yet."""
        return self.kit.secrets.ensure(store_id, (API_KEY,))[API_KEY]

    def get(self, store_id: str) -> ApiKeyView:
        self.kit.load(store_id)
        return ApiKeyView(store_id=store_id, api_key=self.issue(store_id))

    def rotate(self, store_id: str) -> ApiKeyView:
        """A new key; the old one stops working as soon as the backend sees its file change
        (at its next request)."""
        self.kit.load(store_id)
        value = self.kit.secrets.replace(store_id, API_KEY)
        self.kit.caps.need_refresh().refresh_secrets(store_id, {API_KEY: value})
        log.info("store %s: API key rotated", store_id)
        return ApiKeyView(store_id=store_id, api_key=value)
