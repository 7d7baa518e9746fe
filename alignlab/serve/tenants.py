"""Tenants: which API key may use which model or adapter.

The key file (`alignlab serve --api-keys FILE`) is JSON, a key to the names it may use:

    {"sk-admin": ["*"], "sk-team-a": ["base", "a-math"], "sk-team-b": ["b-chat"]}

"*" makes a key an admin: every model, and /v1/load_lora_adapter, /v1/unload_lora_adapter and /metrics. A key
sees only its own names in /v1/models, and a name it may not use answers 404 exactly as a name that does not
exist, so one tenant cannot learn another's adapters. A request without a valid `Authorization: Bearer KEY`
gets 401. Without a key file the server is open: no key is needed and every name is usable.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from alignlab.errors import ConfigError
from alignlab.serve.protocol import APIError

ADMIN = "*"


class Tenants:
    def __init__(self, keys: dict[str, list[str]] | None = None):
        self.keys = keys  # None: no key file, everything open

    @classmethod
    def from_file(cls, path: str | Path | None) -> Tenants:
        if path is None:
            return cls(None)
        try:
            keys = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--api-keys {path}: no such file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"--api-keys {path}: not JSON ({e})") from None
        if not isinstance(keys, dict) or not all(
                isinstance(k, str) and k and isinstance(v, list) and all(isinstance(n, str) for n in v)
                for k, v in keys.items()):
            raise ConfigError(f'--api-keys {path}: expected {{"KEY": ["model-or-adapter", ...]}} ("*" = admin)')
        return cls(keys)

    def allowed(self, authorization: str | None) -> set[str] | None:
        """The names the request's key may use; None means all. 401 for a missing or unknown key."""
        if self.keys is None:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key")
        for known, names in self.keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                return None if ADMIN in names else set(names)
        raise APIError(401, "invalid API key", code="invalid_api_key")

    @staticmethod
    def may_use(allowed: set[str] | None, names: list[str]) -> bool:
        """Whether a key with `allowed` may use a model known by any of `names` (a base model's aliases)."""
        return allowed is None or any(n in allowed for n in names)

    def require_admin(self, authorization: str | None) -> None:
        if self.allowed(authorization) is not None:
            raise APIError(403, "this needs an admin key", code="permission_denied")
