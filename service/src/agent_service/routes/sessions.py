"""Stored session histories: read and forget."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from agent_service.budgets import session_budget_keys
from agent_service.deps import AppState, StateDep, authenticate, client_of
from agent_service.errors import ApiError, ErrorBody, store_unavailable_is_503
from agent_service.schemas import (
    HISTORY_PAGE_DEFAULT,
    HISTORY_PAGE_MAX,
    SESSION_ID_PATTERN,
    SessionOut,
)
from agent_service.store import session_tag

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], dependencies=[Depends(authenticate)])

SessionPath = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]
_ERRORS: dict[int | str, dict[str, object]] = {
    s: {"model": ErrorBody} for s in (401, 404, 422, 503)
}
_NOT_FOUND = ("session-not-found", "no such session (it may have expired)")


async def _check_owner(request: Request, state: AppState, session_id: str) -> None:
    """With client authentication on, another client's session is unknown (404)."""
    client = client_of(request)
    if client is None:
        return
    with store_unavailable_is_503(state["metrics"], "read"):
        owner = await state["owners"].owner(session_tag(session_id))
    if owner != client:
        raise ApiError(404, *_NOT_FOUND)


@router.get(
    "/{session_id}", response_model=SessionOut, response_model_exclude_none=True, responses=_ERRORS
)
async def get_session(
    session_id: SessionPath,
    request: Request,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=HISTORY_PAGE_MAX)] = HISTORY_PAGE_DEFAULT,
    before: Annotated[int | None, Query(ge=0)] = None,
) -> SessionOut:
    """A page of the stored history, oldest first: the last `limit` messages before `before`,
    and the session's token totals (all its turns, trimmed ones included) as `usage`.

    Each store call answers within AGENT_STORE_TIMEOUT_S, else 503 `store-unavailable`.
    """
    request.state.session_id = session_id
    await _check_owner(request, state, session_id)
    with store_unavailable_is_503(state["metrics"], "read"):
        page = await state["store"].page(session_id, limit, before)
    if page is None:
        raise ApiError(404, "session-not-found", "no such session (it may have expired)")
    with store_unavailable_is_503(state["metrics"], "read"):
        totals = await state["budgets"].totals(session_budget_keys(session_tag(session_id)))
    messages = [{**m, "seq": page.first + i} for i, m in enumerate(page.messages)]
    older = page.first > page.oldest
    return SessionOut.model_validate(
        {
            "session_id": session_id,
            "messages": messages,
            "next_before": page.first if older else None,
            "usage": None if totals is None else totals.as_dict(),
        }
    )


@router.delete("/{session_id}", status_code=204, responses=_ERRORS)
async def delete_session(session_id: SessionPath, request: Request, state: StateDep) -> Response:
    """Forget a session."""
    request.state.session_id = session_id
    await _check_owner(request, state, session_id)
    with store_unavailable_is_503(state["metrics"], "delete"):
        deleted = await state["store"].delete(session_id)
        if client_of(request) is not None:
            await state["owners"].forget(session_tag(session_id))
        await state["budgets"].forget(session_budget_keys(session_tag(session_id)))
    if not deleted:
        raise ApiError(404, "session-not-found", "no such session (it may have expired)")
    return Response(status_code=204)
