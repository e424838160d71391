"""Per-account fault injection: make chosen AWS calls of one account fail with a chosen error.

Error bodies follow each protocol's wire format so SDKs parse the code:

* EC2 query (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html,
  "Example error response"): ``<Response><Errors><Error><Code/><Message/></Error></Errors>
  <RequestID/></Response>``.
* S3 (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html, "REST error
  responses"): ``<Error><Code/><Message/><RequestId/><HostId/></Error>``; a HEAD response has no
  body, so SDKs only see the status (botocore: ``Code`` "403", "404", "503", ...).
* AWS query APIs (SNS, STS, IAM, ...; e.g. https://docs.aws.amazon.com/sns/latest/api/CommonErrors.html):
  ``<ErrorResponse><Error><Type>Sender|Receiver</Type><Code/><Message/></Error><RequestId/>
  </ErrorResponse>`` (``Receiver`` for 5xx).
* JSON / REST-JSON APIs (SQS, EventBridge, EBS, ...): ``{"__type": code, "message": ...}`` with
  the ``x-amzn-ErrorType`` header.

A rule (``POST /ami-pipeline-emulator/faults``) names the account, the service (moto's backend
name: ``ec2``, ``s3``, ``sns``, ``sts``, ``ebs``, ``sqs``, ``events``, ...), optionally the
action, the HTTP status, the error code and message, how many times it fires (``count``; null =
until cleared) and optionally a ``resource`` substring that must occur in the request (path,
query string, body, Host or Range header, raw or URL-decoded), a ``principal`` substring that must
occur in the caller's role ARN (STS AssumeRole credentials; plain keys have none), and a
``probability`` (0..1) with which a matching request is failed, drawn from the rule's own
``random.Random(seed)`` so that a seeded rule fails the same n-th matching requests on every run
(transient faults at a rate, as a chaos test needs them). The first live rule that matches a
request and fires answers it in place of moto: the request never reaches moto, so it has no
side effect. A rule whose draw says "pass" lets the next rule have its turn. A rule with
``delay_seconds`` adds latency: the request is held that long, then answered with the rule's
error, or, when the rule has no ``code``, served by moto as usual (the later rules are not tried).

A rule with ``after: true`` fires *after* the request took effect: moto serves the request first
(the image is registered, the tag written, the SNS message delivered to its subscribers, the S3
object written), its answer is read to the end and dropped, and the rule's error is sent instead,
whatever moto answered. That is the caller's view when the response is lost on the way back
(a connection reset or timeout after the server acted; AWS: "a request that times out or fails
may still have succeeded", https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html)
or when the caller crashes right after its call: with a retried 5xx the SDK repeats a call that
already took effect, with a non-retried 4xx the caller sees a failure of a call that happened.

How a request is attributed (the same rules moto uses, so a fault follows the account moto
serves):

* account: ``MOTO_ACCOUNT_ID`` in the environment, else the ``x-moto-account-id`` header, else
  the access key id of the ``Authorization`` header (or the ``AWSAccessKeyId`` query parameter)
  mapped through moto's IAM/STS key table (STS AssumeRole keys map to the role's account), else
  123456789012;
* service: moto's own dispatch (``DomainDispatcherApplication.infer_service_region_host``,
  i.e. the SigV4 credential scope, else body/path heuristics);
* action: for S3 see ``s3_action``; for every other service what moto's botocore-model router
  matches (query ``Action`` parameter for EC2/SNS/STS/IAM and ``X-Amz-Target`` for JSON APIs,
  read directly; method + path through the router for REST APIs), falling back to the raw
  ``Action`` parameter.

Rules are process-wide state kept here (not on a moto backend), cleared per account through
``DELETE /ami-pipeline-emulator/faults?account_id=...`` and all together on
``POST /moto-api/reset``. With no rule defined the middleware passes requests straight through.

The same middleware also counts every AWS API request per account under its (service, action)
attribution, faulted ones included (``ami_emulator.request_counts``).
"""

from __future__ import annotations

import functools
import io
import json
import random
import secrets
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, unquote_plus
from xml.sax.saxutils import escape

from werkzeug.wrappers import Request, Response

from . import gates, request_counts

DEFAULT_ACCOUNT = "123456789012"
CONTROL_PREFIX = "/ami-pipeline-emulator/"
RULE_FIELDS = (
    "account_id",
    "service",
    "action",
    "status",
    "code",
    "message",
    "count",
    "resource",
    "principal",
    "probability",
    "seed",
    "delay_seconds",
    "after",
)
# Longest a latency rule may hold a request (the SDKs' default read timeouts are 60 s or more).
MAX_DELAY_SECONDS = 30.0

_QUERY_XMLNS = {
    "sns": "https://sns.amazonaws.com/doc/2010-03-31/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
    "iam": "https://iam.amazonaws.com/doc/2010-05-08/",
}


# ---------------------------------------------------------------------------------------------
# Rule store
# ---------------------------------------------------------------------------------------------


@dataclass
class FaultRule:
    id: str
    account_id: str
    service: str
    action: str | None
    status: int
    code: str
    message: str
    count: int | None
    resource: str | None
    principal: str | None = None
    probability: float = 1.0
    seed: int = 0
    delay_seconds: float | None = None
    after: bool = False
    fired: int = 0
    matched: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def live(self) -> bool:
        return self.count is None or self.fired < self.count

    def matches(self, service: str, action: str | None, haystack: list[str], principal: str | None) -> bool:
        if not self.live() or self.service != service:
            return False
        if self.action is not None and (action is None or self.action.lower() != action.lower()):
            return False
        if self.resource is not None and not any(self.resource in text for text in haystack):
            return False
        if self.principal is not None and (principal is None or self.principal not in principal):
            return False
        return True

    def draw(self) -> bool:
        """Whether this matching request fails: the rule's next draw (always, at probability 1).
        Called under ``_LOCK``, so the n-th matching request always gets the n-th draw."""
        self.matched += 1
        if self.probability >= 1.0:
            return True
        return self._rng.random() < self.probability

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "service": self.service,
            "action": self.action,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "count": self.count,
            "resource": self.resource,
            "principal": self.principal,
            "probability": self.probability,
            "seed": self.seed,
            "delay_seconds": self.delay_seconds,
            "after": self.after,
            "matched": self.matched,
            "fired": self.fired,
            "remaining": None if self.count is None else max(0, self.count - self.fired),
        }


_LOCK = threading.Lock()
# account id -> rules in creation order (first live match wins)
_RULES: dict[str, list[FaultRule]] = {}


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} must be an integer")
    try:
        number = int(str(value))
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer") from exc
    return number


def _optional_text(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string or null")
    return value


def _probability(value: Any) -> float:
    """``probability``: a number from 0 to 1 (default 1: every matching request fails)."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("probability must be a number from 0 to 1")
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("probability must be a number from 0 to 1")
    return number


def _delay(value: Any) -> float | None:
    """``delay_seconds``: null, or a number of seconds in (0, MAX_DELAY_SECONDS]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_DELAY_SECONDS:
        raise ValueError(f"delay_seconds must be a number of seconds above 0 and at most {MAX_DELAY_SECONDS:g}")
    return float(value)


def add_rule(account_id: str, payload: dict[str, Any]) -> FaultRule:
    """Validate ``payload`` (the POST body) and add the rule. ValueError for bad input."""
    unknown = set(payload) - set(RULE_FIELDS)
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    service = payload.get("service")
    if not isinstance(service, str) or not service.strip():
        raise ValueError("missing field 'service' (moto's service name: ec2, s3, sns, sts, ...)")
    delay = _delay(payload.get("delay_seconds"))
    code = payload.get("code")
    if delay is not None and code is None:
        code = ""  # a latency rule: the request is held, then served by moto
    elif not isinstance(code, str) or not code.strip():
        raise ValueError("missing field 'code' (the AWS error code, e.g. UnauthorizedOperation)")
    status = 400 if payload.get("status") is None else _int(payload["status"], "status")
    if not 400 <= status <= 599:
        raise ValueError("status must be an HTTP error status (400-599)")
    count = None if payload.get("count") is None else _int(payload["count"], "count")
    if count is not None and count < 1:
        raise ValueError("count must be >= 1 or null (until cleared)")
    message = payload.get("message")
    if message is None:
        message = f"{code.strip()} (fault injected by ami-pipeline-emulator)" if code else ""
    elif not isinstance(message, str):
        raise ValueError("message must be a string")
    after = payload.get("after", False)
    if after is None:
        after = False
    if not isinstance(after, bool):
        raise ValueError("after must be true or false")
    probability = _probability(payload.get("probability"))
    seed = secrets.randbits(32) if payload.get("seed") is None else _int(payload["seed"], "seed")
    rule = FaultRule(
        id="fault-" + secrets.token_hex(8),
        account_id=account_id,
        service=service.strip().lower(),
        action=_optional_text(payload, "action"),
        status=status,
        code=code.strip(),
        message=message,
        count=count,
        resource=_optional_text(payload, "resource"),
        principal=_optional_text(payload, "principal"),
        probability=probability,
        seed=seed,
        delay_seconds=delay,
        after=after,
    )
    with _LOCK:
        _RULES.setdefault(account_id, []).append(rule)
    return rule


def list_rules(account_id: str) -> list[dict[str, Any]]:
    with _LOCK:
        return [rule.to_json() for rule in _RULES.get(account_id, [])]


def clear_rules(account_id: str) -> int:
    with _LOCK:
        return len(_RULES.pop(account_id, []))


def reset_faults() -> None:
    """Forget every rule of every account (called on ``POST /moto-api/reset``)."""
    with _LOCK:
        _RULES.clear()


def _has_live_rules(account_id: str | None = None) -> bool:
    with _LOCK:
        if account_id is None:
            return any(rule.live() for rules in _RULES.values() for rule in rules)
        return any(rule.live() for rule in _RULES.get(account_id, []))


def _fire(
    account_id: str, service: str, action: str | None, haystack: list[str], principal: str | None
) -> FaultRule | None:
    with _LOCK:
        for rule in _RULES.get(account_id, []):
            if rule.matches(service, action, haystack, principal) and rule.draw():
                rule.fired += 1
                return rule
    return None


# ---------------------------------------------------------------------------------------------
# Request attribution
# ---------------------------------------------------------------------------------------------


def request_account(environ: dict[str, Any]) -> str:
    """The account moto would serve this request from (``BaseResponse.get_current_account``)."""
    return _attributed_account(environ)[0]


# The access key of the request this server thread is attributing or serving, and the account
# moto's ``get_account_id_from`` named for it (see ``account_lookup_kept_per_request``).
_request_scope = threading.local()


def _attributed_account(environ: dict[str, Any]) -> tuple[str, tuple[str, Any] | None]:
    """``request_account``'s answer, and (access key, ``get_account_id_from``'s answer) when the
    key came from the ``Authorization`` header: the key moto's ``get_access_key`` reads first."""
    import os

    if "MOTO_ACCOUNT_ID" in os.environ:
        return os.environ["MOTO_ACCOUNT_ID"], None
    header = environ.get("HTTP_X_MOTO_ACCOUNT_ID")
    if header:
        return str(header), None
    from moto.core.responses import BaseResponse
    from moto.iam.models import get_account_id_from

    access_key = "AKIAEXAMPLE"
    auth = environ.get("HTTP_AUTHORIZATION")
    match = BaseResponse.access_key_regex.search(auth) if auth else None
    if match:
        access_key = match.group(1)
    else:
        query_key = parse_qs(environ.get("QUERY_STRING", "")).get("AWSAccessKeyId")
        if query_key:
            access_key = query_key[0]
    found = get_account_id_from(access_key)
    return str(found or DEFAULT_ACCOUNT), ((access_key, found) if match else None)


def account_lookup_kept_per_request(lookup: Callable[[str], Any]) -> Callable[[str], Any]:
    """Speed: moto's ``get_account_id_from`` (``moto/iam/models.py``), which walks every
    account's IAM backend in every partition for the access key, answered once per request.

    The request's attribution (``FaultMiddleware``) looks the Authorization header's key up
    first; moto's ``get_current_account`` then looks the same key up again in the same thread
    while serving it. That second lookup is given the first one's answer: the request is
    attributed to one account, at its arrival, by both. Any other key, any other thread, and
    any lookup outside a request (the scope is cleared when the app returns) take moto's walk."""

    @functools.wraps(lookup)
    def kept(access_key: str) -> Any:
        entry = getattr(_request_scope, "account", None)
        if entry is not None and entry[0] == access_key:
            return entry[1]
        return lookup(access_key)

    return kept


def _wsgi_text(value: str) -> str:
    """PATH_INFO is latin-1 decoded bytes under WSGI; recover the UTF-8 text."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _buffer_body(environ: dict[str, Any]) -> bytes:
    """Read the whole body and put it back as a fresh stream for moto."""
    data = gates.read_body(environ)
    environ["wsgi.input"] = io.BytesIO(data)
    return data


def _query_keys(environ: dict[str, Any]) -> dict[str, list[str]]:
    return parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)


def s3_bucket_and_key(environ: dict[str, Any]) -> tuple[str | None, str | None]:
    """Bucket and key of an S3 request, path style or virtual-hosted (moto's host rules)."""
    from moto.s3.responses import S3Response
    from moto.s3.utils import bucket_name_from_url

    request = Request(environ, populate_request=False)
    path = _wsgi_text(environ.get("PATH_INFO", "") or "/")
    if S3Response.subdomain_based_buckets(request):
        bucket = bucket_name_from_url(request.url)
        key = path.lstrip("/") or None
        return bucket, key
    parts = path.lstrip("/").split("/", 1)
    bucket = parts[0] or None
    key = parts[1] if len(parts) > 1 and parts[1] != "" else None
    return bucket, key


# (method, has key) -> [(query parameter or header test, action)], first hit wins, then default
_S3_OBJECT_ACTIONS: dict[str, tuple[list[tuple[str, str]], str]] = {
    "HEAD": ([], "HeadObject"),
    "GET": (
        [
            ("?tagging", "GetObjectTagging"),
            ("?acl", "GetObjectAcl"),
            ("?attributes", "GetObjectAttributes"),
            ("?retention", "GetObjectRetention"),
            ("?legal-hold", "GetObjectLegalHold"),
            ("?uploadId", "ListParts"),
        ],
        "GetObject",
    ),
    "PUT": (
        [
            ("?tagging", "PutObjectTagging"),
            ("?acl", "PutObjectAcl"),
            ("?retention", "PutObjectRetention"),
            ("?legal-hold", "PutObjectLegalHold"),
            ("?uploadId+x-amz-copy-source", "UploadPartCopy"),
            ("?uploadId", "UploadPart"),
            ("x-amz-copy-source", "CopyObject"),
        ],
        "PutObject",
    ),
    "DELETE": ([("?tagging", "DeleteObjectTagging"), ("?uploadId", "AbortMultipartUpload")], "DeleteObject"),
    "POST": (
        [
            ("?uploads", "CreateMultipartUpload"),
            ("?uploadId", "CompleteMultipartUpload"),
            ("?restore", "RestoreObject"),
            ("?select", "SelectObjectContent"),
        ],
        "PostObject",
    ),
}

_S3_BUCKET_SUBRESOURCES = (
    # query parameter, GET action, PUT action, DELETE action
    ("tagging", "GetBucketTagging", "PutBucketTagging", "DeleteBucketTagging"),
    ("policy", "GetBucketPolicy", "PutBucketPolicy", "DeleteBucketPolicy"),
    ("notification", "GetBucketNotificationConfiguration", "PutBucketNotificationConfiguration", None),
    ("versioning", "GetBucketVersioning", "PutBucketVersioning", None),
    ("lifecycle", "GetBucketLifecycleConfiguration", "PutBucketLifecycleConfiguration", "DeleteBucketLifecycle"),
    ("encryption", "GetBucketEncryption", "PutBucketEncryption", "DeleteBucketEncryption"),
    ("cors", "GetBucketCors", "PutBucketCors", "DeleteBucketCors"),
    ("acl", "GetBucketAcl", "PutBucketAcl", None),
    ("ownershipControls", "GetBucketOwnershipControls", "PutBucketOwnershipControls", "DeleteBucketOwnershipControls"),
    ("publicAccessBlock", "GetPublicAccessBlock", "PutPublicAccessBlock", "DeletePublicAccessBlock"),
    ("location", "GetBucketLocation", None, None),
    ("uploads", "ListMultipartUploads", None, None),
    ("versions", "ListObjectVersions", None, None),
)


def s3_action(environ: dict[str, Any]) -> str:
    """The S3 operation name of a request, from method, bucket/key, query string and headers."""
    method = environ.get("REQUEST_METHOD", "GET").upper()
    bucket, key = s3_bucket_and_key(environ)
    query = _query_keys(environ)
    if bucket is None:
        return "ListBuckets"
    if key is not None:
        rules, default = _S3_OBJECT_ACTIONS.get(method, ([], method.title() + "Object"))
        for test, action in rules:
            if all(_s3_test(environ, query, part) for part in test.split("+")):
                return action
        return default
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    for param, get_action, put_action, delete_action in _S3_BUCKET_SUBRESOURCES:
        if param in query:
            chosen = {"GET": get_action, "PUT": put_action, "DELETE": delete_action}.get(method)
            if chosen:
                return chosen
    if method == "HEAD":
        return "HeadBucket"
    if method == "PUT":
        return "CreateBucket"
    if method == "DELETE":
        return "DeleteBucket"
    if method == "GET":
        return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
    return method.title() + "Bucket"


def _s3_test(environ: dict[str, Any], query: dict[str, list[str]], test: str) -> bool:
    if test.startswith("?"):
        return test[1:] in query
    return bool(environ.get("HTTP_" + test.upper().replace("-", "_")))


def _form(environ: dict[str, Any], body: bytes) -> dict[str, list[str]]:
    params = _query_keys(environ)
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded") and body:
        for name, values in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items():
            params.setdefault(name, []).extend(values)
    return params


@functools.lru_cache(maxsize=256)
def _request_protocol(service: str, content_type: str) -> str | None:
    """The protocol moto's router picks for this service and content type (None: unknown)."""
    try:
        from moto.core.request import determine_request_protocol
        from moto.core.utils import get_service_model

        return determine_request_protocol(get_service_model(service), content_type)
    except Exception:  # noqa: BLE001 - no botocore model, or a protocol the service lacks
        return None


def other_action(
    service: str, environ: dict[str, Any], body: bytes, forms: list[dict[str, list[str]]] | None = None
) -> str | None:
    """Operation name of a non-S3 request, as moto's botocore-model router names it.

    For the RPC protocols the router's answer is a parameter, read here directly (it runs for
    every request, see ``request_counts``): Query/EC2 (``QueryRouter``) the ``Action`` parameter
    of query string or form body, JSON (``JSONRouter``) the operation part of ``X-Amz-Target``.
    REST protocols (method + path) go through the router itself. If nothing matches: the raw
    ``Action`` parameter, else the ``X-Amz-Target`` operation, else None. ``forms``, when given,
    receives the parameter map read for the ``Action`` (a new dict no one else holds).
    """

    def param_action() -> str | None:
        form = _form(environ, body)
        if forms is not None:
            forms.append(form)
        action = form.get("Action")
        return action[0] if action and action[0] else None

    def target_action() -> str | None:
        target = environ.get("HTTP_X_AMZ_TARGET")
        return str(target).rsplit(".", 1)[-1] if target else None

    protocol = _request_protocol(service, environ.get("CONTENT_TYPE") or "")
    if protocol in ("query", "ec2"):
        return param_action() or target_action()
    if protocol == "json":
        return target_action() or param_action()
    try:
        from moto.core.request import Request as MotoRequest
        from moto.core.routing import get_service_router

        copy = dict(environ)
        copy["wsgi.input"] = io.BytesIO(body)
        operation, _ = get_service_router(service).match(MotoRequest(copy))
        return str(operation.name)
    except Exception:  # noqa: BLE001 - unknown service model or no route: fall back below
        pass
    return param_action() or target_action()


def _haystack(environ: dict[str, Any], body: bytes) -> list[str]:
    path = _wsgi_text(environ.get("PATH_INFO", ""))
    query = environ.get("QUERY_STRING", "")
    text = body.decode("utf-8", "replace")
    return [
        path,
        unquote(path),
        query,
        unquote_plus(query),
        text,
        unquote_plus(text),
        environ.get("HTTP_HOST", ""),
        # S3 ranged reads differ only in this header (GetObject "Range", RFC 9110 14.2).
        environ.get("HTTP_RANGE", ""),
    ]


# ---------------------------------------------------------------------------------------------
# Error responses
# ---------------------------------------------------------------------------------------------


def _protocol(service: str) -> str:
    try:
        from moto.core.utils import get_service_model

        return str(get_service_model(service).protocol)
    except Exception:  # noqa: BLE001 - no botocore model under that name
        return "query"


def fault_response(rule: FaultRule, service: str, method: str) -> Response:
    """The rule's error answer; for an ``after`` rule marked so that the middleware lets moto
    serve the request first (``gates.after_moto``)."""
    response = error_response(service, method, rule.status, rule.code, rule.message)
    return gates.after_moto(response) if rule.after else response


def error_response(service: str, method: str, status: int, error_code: str, error_message: str) -> Response:
    """An AWS error answer in ``service``'s wire format (used by every gate, see ``gates``)."""
    request_id = str(uuid.uuid4())
    code, message = escape(error_code), escape(error_message)
    protocol = _protocol(service)
    headers: dict[str, str] = {}
    if service == "s3":
        headers["x-amz-request-id"] = request_id.replace("-", "")[:16].upper()
        headers["x-amz-id-2"] = secrets.token_urlsafe(48)
        mimetype = "application/xml"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{headers['x-amz-request-id']}</RequestId>"
            f"<HostId>{headers['x-amz-id-2']}</HostId></Error>"
        )
    elif protocol == "ec2":
        headers["x-amzn-RequestId"] = request_id
        mimetype = "text/xml"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
    elif protocol in ("json", "rest-json"):
        headers["x-amzn-RequestId"] = request_id
        headers["x-amzn-ErrorType"] = error_code
        mimetype = "application/x-amz-json-1.1" if protocol == "json" else "application/json"
        body = json.dumps({"__type": error_code, "message": error_message})
    else:  # query, and rest-xml services other than S3
        headers["x-amzn-RequestId"] = request_id
        mimetype = "text/xml"
        xmlns = _QUERY_XMLNS.get(service)
        opening = f'<ErrorResponse xmlns="{xmlns}">' if xmlns else "<ErrorResponse>"
        error_type = "Receiver" if status >= 500 else "Sender"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"{opening}<Error><Type>{error_type}</Type><Code>{code}</Code><Message>{message}</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    if method == "HEAD":
        body = ""  # HEAD responses carry no body: SDKs only see the status
    return Response(body, status=status, headers=headers, mimetype=mimetype)


# ---------------------------------------------------------------------------------------------
# Middleware
# ---------------------------------------------------------------------------------------------


class FaultMiddleware:
    """WSGI app: attributes every AWS API request to (account, service, action), counts it
    (``request_counts``), answers it if a fault rule matches, and passes every other one to ``app``.

    ``dispatcher`` is moto's ``DomainDispatcherApplication`` (used to tell the service the way
    moto routes the request); by default ``app`` itself.
    """

    def __init__(self, app: Any, dispatcher: Any = None) -> None:
        self.app = app
        self.dispatcher = dispatcher if dispatcher is not None else app
        self._backends: dict[str, str | None] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(("/moto-api", CONTROL_PREFIX)):
            return self.app(environ, start_response)
        try:
            try:
                ctx = self._attribute(environ)
                response = gates.run(ctx)
            except Exception:  # noqa: BLE001 - never turn a gate bug into a broken request
                traceback.print_exc(file=sys.stderr)
                response = None
            if response is not None:
                if gates.served_first(response):
                    self._serve_and_discard(environ)
                return response(environ, start_response)
            return self.app(environ, start_response)
        finally:
            _request_scope.account = None

    def _serve_and_discard(self, environ: dict[str, Any]) -> None:
        """Let moto serve the request (its side effect happens) and drop its answer: the status
        and headers go nowhere, the body is read to the end and the iterable closed, as a WSGI
        server would (PEP 3333, "the server must call close()"). The gates that read the body put
        it back in ``wsgi.input`` (``RequestContext.body``), so moto reads it whole."""

        def discard_start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
            return lambda data: None

        result = self.app(environ, discard_start_response)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _service(self, environ: dict[str, Any], body: bytes | None) -> str | None:
        path = environ.get("PATH_INFO", "")  # as moto's get_application passes it
        try:
            host = self.dispatcher.infer_service_region_host(environ, path)
        finally:
            if body is not None:
                # moto's body sniffing (unsigned requests) does not rewind a body it cannot decode.
                environ["wsgi.input"] = io.BytesIO(body)
        if host is None:
            host = "s3.us-east-1.amazonaws.com"  # moto's DEFAULT_SERVICE_REGION
        return self._backend_for_host(host)

    def _backend_for_host(self, host: str) -> str | None:
        """``dispatcher.get_backend_for_host``, remembered per host: moto's version lists and
        stats its package folders on every call (~1.5 ms), and the answer never changes."""
        try:
            return self._backends[host]
        except KeyError:
            pass
        backend = self.dispatcher.get_backend_for_host(host)
        answer = str(backend) if backend else None
        if len(self._backends) < 4096:  # hosts are service+region names; bound it anyway
            self._backends[host] = answer
        return answer

    def _attribute(self, environ: dict[str, Any]) -> gates.RequestContext:
        """Attribute the request to (account, service, action) and count it."""
        _request_scope.account = None
        account, looked_up = _attributed_account(environ)
        _request_scope.account = looked_up
        service: str | None = None
        action: str | None = None
        body: bytes | None = None
        forms: list[dict[str, list[str]]] = []
        try:
            # moto sniffs the body of unsigned requests to find their service; signed ones are
            # routed by the credential scope, so an S3 upload is not read here (no copy).
            body = None if environ.get("HTTP_AUTHORIZATION") else _buffer_body(environ)
            service = self._service(environ, body)
            if service == "s3":
                action = s3_action(environ)
            elif service is not None:
                if body is None:
                    body = _buffer_body(environ)
                action = other_action(service, environ, body, forms)
        finally:
            request_counts.record(account, service, action)
        # Speed: a form POST's parameter map, read above for the Action, is the one the gates'
        # ``params()`` would read again (the query string's, then the form body's, each with
        # blank values kept: ``_form`` and ``RequestContext.params`` read the same).
        shared = (
            forms[0]
            if forms
            and str(environ.get("REQUEST_METHOD", "GET")).upper() == "POST"
            and str(environ.get("CONTENT_TYPE", "")).startswith("application/x-www-form-urlencoded")
            else None
        )
        return gates.RequestContext(environ, account, service, action, _body=body, _params=shared)


def fault_gate(ctx: gates.RequestContext) -> Response | None:
    """The ``faults`` gate: the first live rule of the account that matches answers."""
    if ctx.service is None or not _has_live_rules(ctx.account):
        return None
    with _LOCK:
        wanted = [r for r in _RULES.get(ctx.account, []) if r.live() and r.service == ctx.service]
    if not wanted:
        return None
    principal = ctx.principal_arn if any(r.principal is not None for r in wanted) else None
    rule = _fire(ctx.account, ctx.service, ctx.action, _haystack(ctx.environ, ctx.body()), principal)
    if rule is None:
        return None
    if rule.delay_seconds is not None:
        # Latency: hold the request (this server thread only; the server is threaded), then
        # answer the rule's error, or, without a code, let moto serve it.
        time.sleep(rule.delay_seconds)
        if not rule.code:
            return None
    return fault_response(rule, ctx.service, ctx.method)


gates.register("faults", fault_gate)
