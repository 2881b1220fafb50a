"""Domain errors raised inside the service and their one mapping to HTTP responses."""

from __future__ import annotations

import logging
import re
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.history import HistoryValidationError
from features.jsonable import jsonable
from serving.store import EventConflictError, WriteRejectedError

logger = logging.getLogger(__name__)

# FastAPI's 400 for a JSON body it could not decode as text (not UTF-8), and what the service says instead
FASTAPI_UNREADABLE_BODY = "There was an error parsing the body"
UNREADABLE_BODY = "the body could not be read as JSON text: send it encoded as UTF-8"


class ServiceError(Exception):
    """Base of errors that map to one HTTP status."""

    status_code = 500

    def __init__(self, detail: Any, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(str(detail))
        self.detail = detail
        self.problems = problems


class AuthenticationError(ServiceError):
    status_code = 401


class ForbiddenError(ServiceError):
    status_code = 403


class NotFoundError(ServiceError):
    """Absent, or outside the caller's pipelines: both answer the same 404."""

    status_code = 404


class ConflictError(ServiceError):
    status_code = 409


class InvalidInputError(ServiceError):
    """Bad input that passed the schema (e.g. a stage change before the deal was created).

    Answers the same shape as a schema error: `{"detail": str, "problems": [{"loc", "msg"}, ...]}`;
    without `problems`, one problem at `loc` (a request path or parameter name) carries the detail.
    """

    status_code = 422

    def __init__(self, detail: str, problems: list[dict[str, Any]] | None = None, loc: str = "body") -> None:
        super().__init__(detail, problems if problems is not None else [{"loc": loc, "msg": detail}])


class PayloadTooLargeError(ServiceError):
    status_code = 413


class ModelUnavailableError(ServiceError):
    status_code = 503


class StoreUnavailableError(ServiceError):
    """The database does not answer (connection refused, dropped, timed out)."""

    status_code = 503


def is_store_outage(exc: BaseException) -> bool:
    """True for a database error that means "unreachable" (not a bug or a constraint violation)."""
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


STORE_RETRY_AFTER_S = 5


class PopulationUnavailableError(ServiceError):
    """The feature population could not be computed from the store (and none was computed before)."""

    status_code = 503


# A URI with a scheme (sqlite:////srv/x.db, file:///..., postgresql://user:pw@host/db) or an absolute
# path: where the service keeps its files and how it reaches its stores is nobody's business but the
# operator's, who finds the full text in the server log.
_LOCATION = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]*|(?<![\w.:/])/[^\s'\"():,]+")
MAX_REASON_CHARS = 500


def public_reason(text: str) -> str:
    """An error's text fit for a client: locations replaced by `<location>`, on one line, bounded."""
    one_line = " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return _LOCATION.sub("<location>", one_line)[:MAX_REASON_CHARS]


def format_loc(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """('body', 'deals', 3, 'amount') -> 'deals[3].amount'."""
    out = ""
    for part in loc:
        if part in ("body",) and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _shown_input(value: Any) -> Any:
    # Pydantic puts the offending input in errors; NaN/inf would break the JSON response itself.
    value = jsonable(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)[:200]


def validation_problems(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as `{loc, msg}` items with loc written like `deals[3].amount`."""
    problems = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            # FastAPI's loc is ("body", the character where the JSON broke), its ctx says why
            at, why = tuple(err.get("loc", ()))[-1], (err.get("ctx") or {}).get("error", "")
            problems.append({"loc": "body", "msg": f"not valid JSON at character {at}: {why}",
                             "type": "json_invalid"})
            continue
        loc = format_loc(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid value"))
        if loc == "body" and isinstance(err.get("input"), bytes):
            # a body sent without a JSON content type reaches validation as bytes, unread
            msg = "the body was not read as JSON: send it with the header 'Content-Type: application/json'"
        item: dict[str, Any] = {"loc": loc, "msg": msg, "type": err.get("type")}
        if "input" in err and not isinstance(err["input"], dict | list):
            item["input"] = _shown_input(err["input"])
        problems.append(item)
    return problems


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors to HTTP once, for every route."""

    import sqlalchemy.exc as sa_exc

    @app.exception_handler(sa_exc.DBAPIError)
    async def _store_error(request: Request, exc: sa_exc.DBAPIError) -> JSONResponse:
        if not is_store_outage(exc):
            raise exc  # a real bug: the server error handler logs it and answers 500
        if "database is locked" in str(exc.orig):
            # SQLite: writers queued past the busy timeout. The store answers, it is saturated.
            logger.warning("store busy on %s: %s", request.url.path, exc)
            # (or, on either backend, this process's writers took longer than that to give a turn)
            hint = ("; SQLite allows one writer at a time: retry later, or use PostgreSQL for many "
                    "concurrent writers") if isinstance(exc.orig, sqlite3.Error) else "; retry later"
            body = {"detail": "the store is busy: other writes held it longer than the write timeout "
                              f"(DEALRISK_WRITE_WAIT_S){hint}"}
        else:
            logger.warning("store unreachable on %s: %s", request.url.path, exc)
            body = {"detail": f"the store is unreachable ({type(exc.orig).__name__}); retry later"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})

    async def _key_refusal(request: Request) -> JSONResponse | None:
        # A route whose key check runs in its own threadpool hop (`serving.auth.require_role_later`) may
        # be refused before it checked the key (a bad body's 422, a dependency's 503 when no model is
        # loaded): a bad key answers 401 / 403 first, as it would have. A check that passed has nothing
        # to add: no threadpool hop for it (an error raised after the check, such as a 404).
        check = getattr(request.state, "key_check", None)
        if check is None or check.passed:
            return None
        try:
            await run_in_threadpool(check)
        except ServiceError as refused:
            return _service_response(refused)
        except sa_exc.DBAPIError as failed:
            return await _store_error(request, failed)
        return None

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if not isinstance(exc, AuthenticationError | ForbiddenError):
            refused = await _key_refusal(request)
            if refused is not None:
                return refused
        return _service_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        refused = await _key_refusal(request)
        return refused if refused is not None else _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == FASTAPI_UNREADABLE_BODY:
            refused = await _key_refusal(request)
            return refused if refused is not None else JSONResponse({"detail": UNREADABLE_BODY}, 400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(WriteRejectedError)
    async def _write_rejected(request: Request, exc: WriteRejectedError) -> JSONResponse:
        # The store checked the write against what it holds and rolled it back; each problem names the
        # stored or sent row by its ids (deal, event), since the store never sees request positions.
        status = 409 if isinstance(exc, EventConflictError) else 422
        problems = [{"loc": p.loc, "msg": p.msg} for p in exc.problems]
        return JSONResponse({"detail": str(exc), "problems": problems}, status_code=status)

    @app.exception_handler(HistoryValidationError)
    async def _history_error(request: Request, exc: HistoryValidationError) -> JSONResponse:
        # Routes normally translate rows to item paths; this is the fallback so it is never a 500.
        problems = [{"loc": p.table, "msg": str(p)} for p in exc.problems]
        return JSONResponse({"detail": str(exc), "problems": problems}, status_code=422)


def _service_response(exc: ServiceError) -> JSONResponse:
    headers: dict[str, str] | None = None
    if isinstance(exc, AuthenticationError):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, StoreUnavailableError):
        headers = {"Retry-After": str(STORE_RETRY_AFTER_S)}
    body: dict[str, Any] = {"detail": exc.detail}
    if exc.problems is not None:
        body["problems"] = exc.problems
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    for err in exc.errors():
        # Too many deals is a batch-size bound, answered 413 like `check_batch_size`, whether the
        # schema's hard ceiling or the configured (lower) limit caught it.
        if err.get("type") == "too_long" and tuple(err.get("loc", ())) == ("body", "deals"):
            ctx = err.get("ctx") or {}
            detail = (f"{ctx.get('actual_length')} deals in one request; "
                      f"the limit is {ctx.get('max_length')}")
            return JSONResponse({"detail": detail}, status_code=413)
    problems = validation_problems(exc)
    summary = "; ".join(f"{p['loc']}: {p['msg']}" for p in problems[:20])
    return JSONResponse({"detail": summary, "problems": problems}, status_code=422)


def history_problems(exc: HistoryValidationError, locators: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Problems of frames built from a request, located as request paths (`deals[3].stage_changes[0]`).

    `locators[table][i]` is the request path of data row i + 1 of that table's frame.
    """
    out = []
    for problem in exc.problems:
        paths = locators.get(problem.table, [])
        if problem.row is not None and 1 <= problem.row <= len(paths):
            loc = paths[problem.row - 1]
        else:
            loc = problem.table
        if problem.column:
            loc = f"{loc}.{problem.column}"
        msg = f"{problem.message} ({problem.hint})" if problem.hint else problem.message
        out.append({"loc": loc, "msg": msg})
    return out


def raise_history_error(exc: HistoryValidationError, locators: dict[str, list[str]]) -> None:
    """Re-raise a HistoryValidationError as a 422 naming each bad item and field."""
    problems = history_problems(exc, locators)
    summary = "; ".join(f"{p['loc']}: {p['msg']}" for p in problems[:20])
    raise InvalidInputError(summary, problems) from exc


def check_batch_size(n_items: int, limit: int) -> None:
    """413 when a batch holds more deals than the configured limit."""
    if n_items > limit:
        raise PayloadTooLargeError(f"{n_items} deals in one request; the limit is {limit}")
