"""Emulator-only control endpoints, in the style of moto's ``/moto-api/``.

They are served by the same process and port as the AWS APIs: ``ControlMiddleware`` wraps
moto's ``DomainDispatcherApplication`` (inside ``faults.FaultMiddleware``) and answers paths
under ``/ami-pipeline-emulator/`` itself; everything else goes on to fault injection and moto.
All bodies are JSON; answers are JSON too, with HTTP 400 for bad input and 404 for an unknown
resource. ``account_id`` defaults to moto's default account 123456789012 and ``region`` to
us-east-1.

  GET  /ami-pipeline-emulator/health
  GET  /ami-pipeline-emulator/config?account_id=...
  POST /ami-pipeline-emulator/config                  {"account_id", "import_delay_seconds"?, "copy_delay_seconds"?, "seal_delay_seconds"?, "public_image_quota"?}
  POST /ami-pipeline-emulator/image-creation-date     {"account_id", "region", "image_id", "creation_date"}
                                                      or {"account_id", "region", "images": [{"image_id", "creation_date"}, ...]}
  POST /ami-pipeline-emulator/image-state {"account_id", "region", "image_id", "state", "state_reason"?}
  POST /ami-pipeline-emulator/image-last-launched-time {"account_id", "region", "image_id", "last_launched_time"}
  POST /ami-pipeline-emulator/snapshot-start-time     {"account_id", "region", "snapshot_id", "start_time"}
  POST   /ami-pipeline-emulator/faults                 {"account_id", "service", "action"?, "status"?, "code",
                                                        "message"?, "count"?, "resource"?, "principal"?,
                                                        "probability"?, "seed"?}  (see ami_emulator.faults)
  GET    /ami-pipeline-emulator/faults?account_id=...  the account's rules with how often each fired
  DELETE /ami-pipeline-emulator/faults?account_id=...  clears the account's rules
  GET    /ami-pipeline-emulator/requests?account_id=... the account's AWS request counts by "service:action"
  DELETE /ami-pipeline-emulator/requests?account_id=... resets them (see ami_emulator.request_counts)

``POST /moto-api/reset`` additionally forgets the per-account configuration, every fault rule and
every request count.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from werkzeug.wrappers import Request, Response

from . import faults, request_counts
from .common import (
    LOCK,
    account_config,
    ec2_backend_for,
    iso_millis,
    parse_timestamp,
    reset_config,
    update_account_config,
)

PREFIX = "/ami-pipeline-emulator/"
DEFAULT_ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload, sort_keys=True), status=status, mimetype="application/json")


def _body(request: Request) -> dict[str, Any]:
    # get_data, not .data: with curl's default form content type werkzeug would parse the body
    # as a form and leave .data empty.
    raw = request.get_data(cache=True, parse_form_data=False)
    if not raw.strip():
        return {}
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise ControlError(400, f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ControlError(400, "body must be a JSON object")
    return payload


def _account(payload: dict[str, Any]) -> str:
    account = str(payload.get("account_id") or DEFAULT_ACCOUNT)
    if not (len(account) == 12 and account.isdigit()):
        raise ControlError(400, f"account_id must be 12 digits, got {account!r}")
    return account


def _region(payload: dict[str, Any]) -> str:
    return str(payload.get("region") or DEFAULT_REGION)


def _required(payload: dict[str, Any], name: str) -> Any:
    value = payload.get(name)
    if value in (None, ""):
        raise ControlError(400, f"missing field {name!r}")
    return value


def _timestamp(payload: dict[str, Any], name: str) -> Any:
    try:
        return parse_timestamp(_required(payload, name), name)
    except ValueError as exc:
        raise ControlError(400, str(exc)) from exc


def _image(payload: dict[str, Any]) -> Any:
    image_id = str(_required(payload, "image_id"))
    backend = ec2_backend_for(_account(payload), _region(payload))
    image = backend.amis.get(image_id)
    if image is None:
        raise ControlError(404, f"image {image_id} not found in {_account(payload)}/{_region(payload)}")
    return image


def _delay(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ControlError(400, f"{name} must be a number") from exc
    if number < 0:
        raise ControlError(400, f"{name} must be >= 0")
    return number


def handle_config(request: Request) -> Response:
    if request.method == "GET":
        account = _account(dict(request.args))
        return _json(200, {"account_id": account, **account_config(account)})
    payload = _body(request)
    account = _account(payload)
    updates: dict[str, float | None] = {}
    for name in ("import_delay_seconds", "copy_delay_seconds", "seal_delay_seconds", "public_image_quota"):
        if name in payload:
            updates[name] = _delay(payload[name], name)
    unknown = set(payload) - {"account_id", "import_delay_seconds", "copy_delay_seconds", "seal_delay_seconds", "public_image_quota"}
    if unknown:
        raise ControlError(400, f"unknown fields: {sorted(unknown)}")
    return _json(200, {"account_id": account, **update_account_config(account, updates)})


def handle_image_creation_date(request: Request) -> Response:
    payload = _body(request)
    if "images" in payload:
        return _bulk_image_creation_date(payload)
    when = _timestamp(payload, "creation_date")
    with LOCK:
        image = _image(payload)
        image.creation_date = when
    return _json(200, {"image_id": image.id, "creation_date": iso_millis(when)})


def _bulk_image_creation_date(payload: dict[str, Any]) -> Response:
    """``{"account_id", "region", "images": [{"image_id", "creation_date"}, ...]}``: all or
    nothing. Every entry is parsed first (400 on the first malformed one), then every image is
    looked up (404 on the first unknown one); only then are the dates set."""
    if "image_id" in payload or "creation_date" in payload:
        raise ControlError(400, "give either image_id/creation_date or images, not both")
    entries = payload["images"]
    if not isinstance(entries, list):
        raise ControlError(400, "images must be a list of {image_id, creation_date} objects")
    account, region = _account(payload), _region(payload)
    parsed: list[tuple[str, Any]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ControlError(400, f"images[{index}] must be an object")
        try:
            image_id = str(_required(entry, "image_id"))
            when = _timestamp(entry, "creation_date")
        except ControlError as exc:
            raise ControlError(400, f"images[{index}]: {exc.message}") from exc
        parsed.append((image_id, when))
    with LOCK:
        backend = ec2_backend_for(account, region)
        found = []
        for image_id, when in parsed:
            image = backend.amis.get(image_id)
            if image is None:
                raise ControlError(404, f"image {image_id} not found in {account}/{region}; nothing changed")
            found.append((image, when))
        for image, when in found:
            image.creation_date = when
    return _json(
        200,
        {
            "updated": len(found),
            "images": [{"image_id": image.id, "creation_date": iso_millis(when)} for image, when in found],
        },
    )


def handle_image_last_launched_time(request: Request) -> Response:
    payload = _body(request)
    with LOCK:
        image = _image(payload)
        if payload.get("last_launched_time") is None:
            image.last_launched_time = None
            return _json(200, {"image_id": image.id, "last_launched_time": None})
        when = _timestamp(payload, "last_launched_time")
        image.last_launched_time = iso_millis(when)
    return _json(200, {"image_id": image.id, "last_launched_time": image.last_launched_time})


# A test control, not an AWS API: an image's state as DescribeImages shows it, to reproduce what
# the product must handle (a CopyImage copy that ends `failed`: "pending | available | invalid |
# deregistered | transient | failed | error | disabled", botocore's ImageState).
_SETTABLE_IMAGE_STATES = ("pending", "available", "failed", "error", "invalid", "transient")


def handle_image_state(request: Request) -> Response:
    """Sets an image's state and, optionally, the ``StateReason`` DescribeImages reports with it
    (``{"code", "message"}``, botocore's ``StateReason``: "The reason for the state change",
    e.g. why a copy failed); a state set without one clears it."""
    payload = _body(request)
    state = str(_required(payload, "state"))
    if state not in _SETTABLE_IMAGE_STATES:
        raise ControlError(400, f"state must be one of {', '.join(_SETTABLE_IMAGE_STATES)}, not {state!r}")
    reason = payload.get("state_reason")
    if reason is not None and (
        not isinstance(reason, dict)
        or set(reason) - {"code", "message"}
        or not all(isinstance(v, str) for v in reason.values())
    ):
        raise ControlError(400, 'state_reason must be {"code": "...", "message": "..."}')
    with LOCK:
        image = _image(payload)
        image.state = state
        image.state_reason = (
            None if reason is None else {"Code": reason.get("code", ""), "Message": reason.get("message", "")}
        )
    return _json(200, {"image_id": image.id, "state": state, "state_reason": reason})


def handle_snapshot_start_time(request: Request) -> Response:
    payload = _body(request)
    when = _timestamp(payload, "start_time")
    snapshot_id = str(_required(payload, "snapshot_id"))
    with LOCK:
        backend = ec2_backend_for(_account(payload), _region(payload))
        snapshot = backend.snapshots.get(snapshot_id)
        if snapshot is None:
            raise ControlError(404, f"snapshot {snapshot_id} not found in {_account(payload)}/{_region(payload)}")
        snapshot.start_time = when
    return _json(200, {"snapshot_id": snapshot_id, "start_time": iso_millis(when)})


def handle_faults(request: Request) -> Response:
    if request.method == "POST":
        payload = _body(request)
        account = _account(payload)
        try:
            rule = faults.add_rule(account, {k: v for k, v in payload.items()})
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
        return _json(200, rule.to_json())
    account = _account(dict(request.args))
    if request.method == "DELETE":
        return _json(200, {"account_id": account, "cleared": faults.clear_rules(account)})
    return _json(200, {"account_id": account, "faults": faults.list_rules(account)})


def handle_requests(request: Request) -> Response:
    account = _account(dict(request.args))
    if request.method == "DELETE":
        return _json(200, {"account_id": account, "cleared": request_counts.clear(account)})
    return _json(200, request_counts.snapshot(account))


def handle_health(request: Request) -> Response:
    import moto

    return _json(200, {"status": "ok", "moto_version": moto.__version__})


ROUTES: dict[str, tuple[tuple[str, ...], Callable[[Request], Response]]] = {
    "health": (("GET",), handle_health),
    "config": (("GET", "POST"), handle_config),
    "image-creation-date": (("POST",), handle_image_creation_date),
    "image-last-launched-time": (("POST",), handle_image_last_launched_time),
    "snapshot-start-time": (("POST",), handle_snapshot_start_time),
    "image-state": (("POST",), handle_image_state),
    "faults": (("GET", "POST", "DELETE"), handle_faults),
    "requests": (("GET", "DELETE"), handle_requests),
}


_RESET_HOOKS: list[Callable[[], None]] = []


def register_route(name: str, methods: tuple[str, ...], handler: Callable[[Request], Response]) -> None:
    """Add ``/ami-pipeline-emulator/<name>`` (modules with their own state register theirs)."""
    if name in ROUTES:
        raise ValueError(f"control route {name!r} is already registered")
    ROUTES[name] = (methods, handler)


def register_reset(hook: Callable[[], None]) -> None:
    """Run ``hook`` on ``POST /moto-api/reset`` (forget a module's emulator-only state)."""
    _RESET_HOOKS.append(hook)


class ControlMiddleware:
    """WSGI app: control routes here, every other request to the wrapped moto app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(PREFIX):
            return self._control(environ, start_response, path[len(PREFIX) :].strip("/"))
        if path.rstrip("/") == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
            reset_config()
            faults.reset_faults()
            request_counts.reset_counts()
            for hook in _RESET_HOOKS:
                hook()
        return self.app(environ, start_response)

    def _control(self, environ: dict[str, Any], start_response: Any, name: str) -> Any:
        request = Request(environ)
        route = ROUTES.get(name)
        try:
            if route is None:
                raise ControlError(404, f"unknown control endpoint {PREFIX}{name}")
            methods, handler = route
            if request.method not in methods:
                raise ControlError(405, f"{request.method} not allowed on {PREFIX}{name}")
            response = handler(request)
        except ControlError as exc:
            response = _json(exc.status, {"error": exc.message})
        return response(environ, start_response)
