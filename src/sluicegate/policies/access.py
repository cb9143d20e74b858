"""Model access: a principal may use a model when its group grants it and its key does not narrow it away."""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..errors import ModelAccessDenied
from ..types import Principal


def may_use(principal: Principal, model_id: str) -> bool:
    if principal.is_admin:
        return True
    if principal.models is None or not _matches(principal.models, model_id):
        return False
    return principal.key_models is None or _matches(principal.key_models, model_id)


def check_model_access(principal: Principal, model_id: str) -> None:
    if not may_use(principal, model_id):
        raise ModelAccessDenied(f"This API key may not use the model '{model_id}'", param="model")


def _matches(patterns: tuple[str, ...], model_id: str) -> bool:
    return any(p == model_id or fnmatchcase(model_id, p) for p in patterns)
