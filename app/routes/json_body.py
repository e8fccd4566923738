"""JSON request bodies parsed by the app, so that every unparseable one gets the same 400 naming its problem.

FastAPI parses a JSON body itself, before any dependency runs, and answers what it cannot parse in two ways: a
syntax error as a 422 validation error, anything else (invalid UTF-8, deep nesting, a number too long to convert)
as 400 "There was an error parsing the body", which names nothing. Its ``request.json()`` is the one hook: a route
class hands the handler a Request whose ``json()`` raises one 400 instead (the pattern of FastAPI's "Custom Request
and APIRoute class" guide).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute


class _NotJSONError(Exception):
    """NaN, Infinity or -Infinity: Python's json reads them, JSON has no such literals."""


def _refuse_constant(name: str) -> Any:
    raise _NotJSONError(name)


def parse_json_body(body: bytes) -> Any:
    """``json.loads``, or a 400 saying why the body cannot be read as JSON."""
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except _NotJSONError as exc:  # before, a 422 "Input should be a valid integer (got nan)", as if it were JSON
        problem = f"{exc} is not a JSON value (JSON numbers are finite)"
    except json.JSONDecodeError as exc:
        problem = f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    except UnicodeDecodeError as exc:
        problem = f"it is not UTF-8 text (byte {exc.start}: {exc.reason})"
    except RecursionError:
        problem = "its arrays or objects are nested too deeply"
    except ValueError:  # the only other one: int() refuses numbers this long (a guard against quadratic time)
        problem = f"a number has more than {sys.get_int_max_str_digits()} digits"
    raise HTTPException(400, f"cannot parse the request body as JSON: {problem}")


class JSONBodyRequest(Request):
    """A Request whose ``json()`` answers 400 for a body that cannot be parsed (``parse_json_body``)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_body(await self.body())
        return self._json


class JSONBodyRoute(APIRoute):
    """A route that reads its JSON body through ``JSONBodyRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(JSONBodyRequest(request.scope, request.receive))

        return handle
