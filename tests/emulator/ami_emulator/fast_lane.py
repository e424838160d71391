"""Speed: the per-image EC2 calls of a cleanup set up and answered without moto's generic layers.

A cleanup's calls are, per image it removes, one ``DescribeImageAttribute`` (launch permissions)
and one ``DeregisterImage`` (ours, with ``DeleteAssociatedSnapshots``) or one ``DeregisterImage``
and one ``DeleteSnapshot`` (aws-amicleaner). For each, moto 5.2.5's ``BaseResponse.dispatch``
spends most of the server's time on work that is generic over every protocol and service
(``moto/core/responses.py``): ``setup_class`` has werkzeug parse the form (``request.data`` and
``request.form``: the input stream, the form parser, a MultiDict), decodes it again into
``querystring``, and ``parse_parameters`` walks botocore's input shape with moto's
``QueryParser``; ``serialized`` then walks the output shape with ``EC2Serializer`` and hands the
result to xmltodict. Measured in process (a loop of signed requests through the emulator's
middleware), that was about 0.35 of the 0.6-0.7 ms each of these calls cost.

For exactly these actions (``LANE_ACTIONS``), and only for requests of the plainest form a
client sends — a ``POST`` of ``application/x-www-form-urlencoded`` ASCII text with no query
string and no ``Content-Encoding``, each parameter once, every parameter a scalar member of
the operation's input shape (string, or boolean spelled ``true`` / ``false``), a Host header,
from the WSGI server — the response object is set up here with the same attributes
``setup_class`` gives it, computed directly:

* the form's pairs are those werkzeug's ``FormDataParser`` makes (the same ``parse_qsl`` call:
  ``keep_blank_values``, werkzeug's ``url_quote`` error handler), ``form_data`` is the request's
  ``parameter_storage_class`` of them, ``querystring`` (and ``data``) an ``OrderedDict`` of each
  key's one value in a list, ``body`` the empty text and ``raw_body`` the empty bytes that
  ``request.data`` is once werkzeug has read a form;
* ``params`` is what ``QueryParser`` makes of such a form: each member present, in the input
  shape's order, under its member name, the string as sent, the boolean as a ``bool``;
* the region, access key and account come from moto's own ``get_region_from_url``,
  ``get_access_key`` and ``get_current_account``, and ``mark_account_as_visited`` is called as
  ``setup_class`` calls it;

and moto's own ``call_action`` serves the request from there: its authorization step, the
handler (moto's, with every patch of this emulator), its error answers, the request id. The
werkzeug request itself is left unread; anything that reads its form or data later gets what
werkzeug would have given it.

The one other step taken over is the serialization of a *successful* answer
(``serialized``) whose result is a dict (or nothing) shaped as the operation's output and made
only of strings, booleans, integers, flat structures of those and lists of them (``_xml``).
It is written as ``EC2Serializer`` writes it: the ``<?xml ...?>`` declaration, a
``<{Operation}Response>`` element in the API version's namespace, each member present in the
shape's order under its ``locationName``, list entries as ``<item>``, an empty list as a short
empty element, a structure with no member present likewise, text escaped as
``xml.sax.saxutils.escape`` does, then ``requestId``
(``request-id``, as moto's serializer context has it), with ``Content-Type: text/xml`` and the
response headers. A result with anything else — another key, a ``None``, an empty string,
a value of another type than its member's shape (a number in a string member, a date), a
member a response transformer may rewrite — goes to moto's serializer;
so does every error.

``tests/emulator/test_fast_paths.py`` checks both halves against moto: the attributes
``setup_class`` and this set-up give a response object (``vars``) for many requests, and every
answer (status, headers, body) of a boto3 workload over these actions — launch permissions of
each kind, snapshot results of each code, dry runs, unknown and malformed ids, protection,
denials — served with the lane and without. ``AMI_EMULATOR_LANE=off`` (``--lane off``) serves
them all through moto, for comparison.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from typing import Any, Callable
from urllib.parse import parse_qsl, urlparse
from xml.sax.saxutils import escape

from moto import settings
from moto.core.responses import ActionResult, EmptyResult, _decode_dict, get_service_model
from moto.iam.models import mark_account_as_visited
from moto.utilities.utils import get_partition

LANE_ACTIONS = ("DescribeImageAttribute", "DeregisterImage", "DeleteSnapshot")

_FORM = "application/x-www-form-urlencoded"
_SCALARS = ("string", "boolean")
_LOCK = threading.Lock()


class _Operation:
    """What the lane needs of one operation's botocore model."""

    def __init__(self, operation_model: Any, namespace: str) -> None:
        self.name = operation_model.name
        # Query parameter name -> (member name, type), for the input shape's scalar members;
        # None when the input shape has a member of any other kind (the lane never applies).
        self.inputs: dict[str, tuple[str, str]] | None = {}
        self.order: list[str] = []
        shape = operation_model.input_shape
        for name, member in (shape.members.items() if shape is not None else ()):
            if member.type_name not in _SCALARS:
                self.inputs = None
                break
            query = member.serialization.get("queryName") or _capitalize(member.serialization.get("name")) or name
            self.inputs[query] = (name, member.type_name)
            self.order.append(name)
        self.output = operation_model.output_shape
        self.open = f'<?xml version="1.0" encoding="utf-8"?>\n<{self.name}Response xmlns="{namespace}">'
        self.close = f"<requestId>request-id</requestId></{self.name}Response>"


def _capitalize(name: str | None) -> str | None:
    return name[0].upper() + name[1:] if name else None


_OPERATIONS: dict[str, _Operation] = {}


def _operation(action: str) -> _Operation:
    op = _OPERATIONS.get(action)
    if op is None:
        model = get_service_model("ec2")
        op = _Operation(model.operation_model(action), f"http://ec2.amazonaws.com/doc/{model.api_version}")
        with _LOCK:
            _OPERATIONS[action] = op
    return op


def enabled() -> bool:
    """Whether the lane is on (``AMI_EMULATOR_LANE``, default on)."""
    return os.environ.get("AMI_EMULATOR_LANE", "on") != "off"


def _form_pairs(request: Any, environ: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The form's pairs as werkzeug would parse them, or None for any request that is not a
    plain ASCII form in a buffered body."""
    if request.method != "POST" or environ.get("QUERY_STRING"):
        return None
    # werkzeug's ``mimetype``: the Content-Type up to its first ";", stripped, lower case.
    if str(environ.get("CONTENT_TYPE", "")).partition(";")[0].strip().lower() != _FORM:
        return None
    if environ.get("HTTP_CONTENT_ENCODING") or not request.from_wsgi_server or "HTTP_HOST" not in environ:
        return None
    stream = environ.get("wsgi.input")
    if type(stream) is not io.BytesIO or stream.tell() != 0:
        return None
    data = stream.getvalue()
    if str(len(data)) != str(environ.get("CONTENT_LENGTH", "")).strip() or not data.isascii():
        return None
    # werkzeug.formparser.FormDataParser._parse_urlencoded, the same call.
    return parse_qsl(data.decode(), keep_blank_values=True, errors="werkzeug.url_quote")


def set_up(response_class: Any, request: Any, environ: dict[str, Any], full_url: str) -> Any | None:
    """A ``response_class`` (``EC2Response``) object with the attributes ``setup_class`` would
    give it, for a request the lane serves (module docstring); None for any other."""
    pairs = _form_pairs(request, environ)
    if not pairs:
        return None
    action = pairs[0][1] if pairs[0][0] == "Action" else dict(pairs).get("Action")
    if action not in LANE_ACTIONS:
        return None
    op = _operation(action)
    if op.inputs is None:
        return None
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key in seen:
            return None
        seen[key] = value
    params: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    for key, value in seen.items():
        if key in ("Action", "Version"):
            continue
        entry = op.inputs.get(key)
        if entry is None:
            return None
        name, kind = entry
        if kind == "boolean":
            if value not in ("true", "false"):
                return None
            parsed[name] = value == "true"
        else:
            parsed[name] = value
    for name in op.order:
        if name in parsed:
            params[name] = parsed[name]

    r = response_class()
    if not r.automated_parameter_parsing:
        return None
    r.is_werkzeug_request = True
    r.normalized_request = request
    r.parsed_url = urlparse(full_url)
    r.body = ""
    r.form_data = request.parameter_storage_class(pairs)
    r.raw_body = b""
    querystring = _decode_dict(OrderedDict((key, [value]) for key, value in pairs))
    r.uri = full_url
    r.path = r.parsed_url.path
    r.raw_path = request.raw_path
    r.querystring = querystring
    r.data = querystring
    r.method = request.method
    r.region = r.get_region_from_url(request, full_url)
    r.partition = get_partition(r.region)
    r.uri_match = {}
    r.headers = request.headers
    r.response_headers = {"server": "amazon.com"}
    r.params = params
    r.access_key = r.get_access_key()
    r.current_account = r.get_current_account()
    mark_account_as_visited(account_id=r.current_account, access_key=r.access_key, service=r.service_name, region=r.region)
    r.serialized = _serialized(r, op, r.serialized)
    return r


def _serialized(response: Any, op: _Operation, moto_serialized: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``response.serialized`` for this request: a successful result the lane can write is
    written here, anything else by moto."""

    def serialized(action_result: Any) -> Any:
        if settings.PRETTIFY_RESPONSES or type(action_result) not in (ActionResult, EmptyResult):
            return moto_serialized(action_result)
        body = _xml(op, action_result.result, _transformed_keys(type(response).RESPONSE_KEY_PATH_TO_TRANSFORMER))
        if body is None:
            return moto_serialized(action_result)
        headers = {"Content-Type": "text/xml"}
        headers.update(response.response_headers)
        return 200, headers, body

    return serialized


# The last key of each path in a response class's transformer table, kept per (table, size):
# moto only adds to the table.
_TRANSFORMED: dict[int, tuple[int, frozenset[str]]] = {}


def _transformed_keys(table: dict[str, Any]) -> frozenset[str]:
    kept = _TRANSFORMED.get(id(table))
    if kept is None or kept[0] != len(table):
        kept = (len(table), frozenset(path.rsplit(".", 1)[-1] for path in list(table)))
        with _LOCK:
            _TRANSFORMED[id(table)] = kept
    return kept[1]


def _xml(op: _Operation, result: Any, transformers: frozenset[str]) -> str | None:
    parts = [op.open]
    if result is not None:
        if op.output is None or not _structure(parts, op.output, result, transformers):
            return None
    elif op.output is not None and op.output.members:
        return None
    parts.append(op.close)
    return "".join(parts)


# The Python type of a value the lane writes for each scalar shape type (any other pairing, a
# number in a string member say, is left to moto's serializer).
_SCALAR_TYPES: dict[str, type] = {"string": str, "boolean": bool, "integer": int, "long": int}


def _scalar(value: Any) -> str | None:
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        return escape(value) if value else None
    if kind is int:
        return str(value)
    return None


def _structure(parts: list[str], shape: Any, value: Any, transformers: frozenset[str]) -> bool:
    """Appends the members of ``value`` (a dict keyed by member names only) in ``shape``'s
    order; False for anything the lane does not write."""
    if type(value) is not dict:
        return False
    members = shape.members
    for key in value:
        if key not in members or key in transformers:
            return False
    for name, member in members.items():
        if name not in value:
            continue
        item = value[name]
        tag = member.serialization.get("name")
        if not tag or item is None:
            return False
        if member.type_name == "list":
            if type(item) is not list or member.member.serialization.get("name") != "item":
                return False
            if not item:
                parts.append(f"<{tag}/>")
                continue
            parts.append(f"<{tag}>")
            for entry in item:
                if member.member.type_name != "structure" or not _element(parts, "item", member.member, entry, transformers):
                    return False
            parts.append(f"</{tag}>")
        elif member.type_name == "structure":
            if not _element(parts, tag, member, item, transformers):
                return False
        else:
            text = _scalar(item) if _SCALAR_TYPES.get(member.type_name) is type(item) else None
            if text is None:
                return False
            parts.append(f"<{tag}>{text}</{tag}>")
    return True


def _element(parts: list[str], tag: str, shape: Any, value: Any, transformers: frozenset[str]) -> bool:
    """``<tag>`` holding a structure of scalar members only (a list entry, an attribute value);
    one with no member present is a short empty element, as xmltodict writes an empty dict."""
    if any(m.type_name in ("list", "structure", "map") for m in shape.members.values()):
        return False
    if value == {}:
        parts.append(f"<{tag}/>")
        return True
    parts.append(f"<{tag}>")
    if not _structure(parts, shape, value, transformers):
        return False
    parts.append(f"</{tag}>")
    return True
