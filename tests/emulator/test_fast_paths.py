"""The speed-only paths answer as the slow ones did.

* The snapshot -> images index of the ``amis`` store (``ami_emulator.image_index``):
  DeleteSnapshot's ``InvalidSnapshot.InUse`` and DeregisterImage's ``skipped`` answer as the scan
  over every image did, through every way an image enters or leaves the store.
* ``ami_emulator.fast_dispatch``: moto's "is the action a method of the response class" test,
  the request id put in a body only when the body has the tag, and random strings drawn with one
  call; the IAM gate's global context made once per second.
* ``ami_emulator.fast_http`` (request headers), ``ami_emulator.fast_serialize`` (the value each
  response member is given, and the XML text), the keep-alive handler's cached Date header:
  a server in this process answers a boto3 workload while every fast answer is compared with the
  slow one for the very same input.
* ``ami_emulator.direct_dispatch`` (EC2 requests without Flask): the same workload, from the same
  state and seed, through a server with it and one without gives the same answers."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import io
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Iterator

import pytest

from conftest import Account
from emu_helpers import aws_error, make_snapshot, register
from test_iam import allow, doc, restrict


def _mapping(*snapshots: str) -> list[dict[str, Any]]:
    return [{"DeviceName": f"/dev/xvd{chr(ord('a') + n)}", "Ebs": {"SnapshotId": s}} for n, s in enumerate(snapshots)]


def test_in_use_names_the_first_registered_user_until_each_is_gone(account: Account) -> None:
    ec2 = account.ec2()
    shared = make_snapshot(ec2, 1)
    first = register(ec2, "idx-first", shared)
    second = register(ec2, "idx-second", shared)
    third = ec2.register_image(Name="idx-third", RootDeviceName="/dev/xvda", BlockDeviceMappings=_mapping(shared, shared))[
        "ImageId"
    ]
    for user in (first, second, third):
        # The message names an image that still uses it: the oldest registration left.
        with aws_error("InvalidSnapshot.InUse", f"The snapshot {shared} is currently in use by {user}"):
            ec2.delete_snapshot(SnapshotId=shared)
        ec2.deregister_image(ImageId=user)
    ec2.delete_snapshot(SnapshotId=shared)


def test_a_snapshot_is_reported_once_per_deregistration_and_freed_by_the_last_user(account: Account) -> None:
    ec2 = account.ec2()
    shared, own = make_snapshot(ec2, 1), make_snapshot(ec2, 1)
    twice = ec2.register_image(Name="idx-twice", RootDeviceName="/dev/xvda", BlockDeviceMappings=_mapping(shared, own, shared))[
        "ImageId"
    ]
    other = register(ec2, "idx-other", shared)
    result = ec2.deregister_image(ImageId=twice, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [
        {"SnapshotId": shared, "ReturnCode": "skipped"},
        {"SnapshotId": own, "ReturnCode": "success"},
    ]
    result = ec2.deregister_image(ImageId=other, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [{"SnapshotId": shared, "ReturnCode": "success"}]
    assert not ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]


def test_copied_images_and_images_baked_from_instances_protect_their_snapshots(account: Account) -> None:
    ec2 = account.ec2()
    source = register(ec2, "idx-source", make_snapshot(ec2, 1))
    copy_id = ec2.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="idx-copy")["ImageId"]
    (copied,) = ec2.describe_images(ImageIds=[copy_id])["Images"]
    copy_snapshot = copied["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    with aws_error("InvalidSnapshot.InUse", copy_id):
        ec2.delete_snapshot(SnapshotId=copy_snapshot)

    # moto's own Ami (CreateImage from an instance) with the snapshot it makes for the image.
    instance = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]
    baked = ec2.create_image(InstanceId=instance["InstanceId"], Name="idx-baked")["ImageId"]
    (image,) = ec2.describe_images(ImageIds=[baked])["Images"]
    baked_snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    with aws_error("InvalidSnapshot.InUse", baked):
        ec2.delete_snapshot(SnapshotId=baked_snapshot)
    result = ec2.deregister_image(ImageId=baked, DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [{"SnapshotId": baked_snapshot, "ReturnCode": "success"}]


def test_the_index_holds_while_eventual_consistency_is_on(account: Account) -> None:
    status, body = account.control("consistency", {"account_id": account.id, "lag_seconds": 30})
    assert status == 200, body
    try:
        ec2 = account.ec2()
        snap = make_snapshot(ec2, 1)
        image_id = register(ec2, "idx-lagged", snap)  # not visible to DescribeImages yet
        with aws_error("InvalidSnapshot.InUse", image_id):
            ec2.delete_snapshot(SnapshotId=snap)
        result = ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
        assert result["DeleteSnapshotResults"] == [{"SnapshotId": snap, "ReturnCode": "success"}]
    finally:
        account.control("consistency", {"account_id": account.id, "lag_seconds": 0})


class _Image:
    """Just what the index reads: an id and block device mappings."""

    def __init__(self, image_id: str, *snapshots: str) -> None:
        self.id = image_id
        self._bdm = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": s}} for s in snapshots]


@pytest.mark.parametrize("cls_name", ["SnapshotIndexedImages", "ImageCreationLog"])
def test_every_write_of_the_store_keeps_the_index(cls_name: str) -> None:
    from ami_emulator import consistency, image_index

    def make(initial: dict[str, Any]) -> Any:
        if cls_name == "ImageCreationLog":
            return consistency.ImageCreationLog(initial, "123456789012")
        return image_index.SnapshotIndexedImages(initial)

    store = make({"ami-1": _Image("ami-1", "snap-a", "snap-b")})
    assert store.images_using("snap-a") == ["ami-1"]
    store["ami-2"] = _Image("ami-2", "snap-a")
    store.setdefault("ami-3", _Image("ami-3", "snap-c"))
    store.update({"ami-4": _Image("ami-4", "snap-a")})
    assert store.images_using("snap-a") == ["ami-1", "ami-2", "ami-4"]
    store["ami-2"] = _Image("ami-2", "snap-d")  # replaced: its old mapping is forgotten
    assert store.images_using("snap-a") == ["ami-1", "ami-4"]
    assert store.images_using("snap-d") == ["ami-2"]
    store.pop("ami-1")
    del store["ami-4"]
    assert store.images_using("snap-a") == []
    assert store.pop("ami-9", None) is None
    assert store.images_using("snap-c") == ["ami-3"]
    store.popitem()  # ami-3, the last stored
    assert store.images_using("snap-c") == []
    store.clear()
    assert store.images_using("snap-d") == [] and dict(store) == {}


def test_dispatch_method_names_answer_as_moto_lists_them() -> None:
    """``fast_dispatch.method_names_from_class``: ``in`` agrees with moto's list of the class's
    function members (``inspect.getmembers``) for every member name and a few non-members."""
    import inspect

    from moto.ec2.responses import EC2Response

    from ami_emulator import apply_extensions, fast_dispatch

    apply_extensions()
    listed = [name for name, _ in inspect.getmembers(EC2Response, predicate=inspect.isfunction)]
    names = fast_dispatch.method_names_from_class(EC2Response)
    assert list(names) == listed and len(names) == len(listed)
    assert "describe_image_references" in listed  # an extension's handler
    for name in dir(EC2Response) + ["no_such_action", "mro", "__class__", ""]:
        assert (name in names) == (name in listed), name


def test_action_names_become_method_names_as_moto_converts_them() -> None:
    """``fast_dispatch.snake_case``: moto's ``camelcase_to_underscores`` answer for every
    operation of the services the emulator serves, odd strings, and each again (the kept
    answer)."""
    import botocore.session
    from moto.core.utils import camelcase_to_underscores

    from ami_emulator import apply_extensions, fast_dispatch

    apply_extensions()
    import moto.core.responses as responses

    assert responses.camelcase_to_underscores is not camelcase_to_underscores  # installed
    converted = fast_dispatch.snake_case(camelcase_to_underscores)
    session = botocore.session.get_session()
    names = [op for service in ("ec2", "s3", "sns", "sqs", "sts", "iam", "ebs") for op in session.get_service_model(service).operation_names]
    names += ["", "A", "aB", "ABC", "IDs", "describeImages", "Describe_Images", "Ünïcode", "x" * 300]
    assert len(names) > 900
    for _ in range(2):
        for name in names:
            assert converted(name) == camelcase_to_underscores(name), name
            assert responses.camelcase_to_underscores(name) == camelcase_to_underscores(name), name


def test_member_values_are_picked_from_dicts_and_objects_as_moto_picks_them() -> None:
    """``fast_serialize.get_value``'s lookups on a plain dict (``in``) and on an object without
    ``__getitem__`` (``getattr``), against moto's picker, for every member of EC2 outputs: every
    name moto tries present at once (its first name must win), each alone, none, a None value,
    and a dict subclass and a mapping object (moto's own lookup)."""
    from moto.core.serialize import AttributePickerContext, EC2Serializer, XFormedAttributePicker
    from moto.core.utils import get_service_model

    from ami_emulator import fast_serialize

    class Mapping:
        def __init__(self, data: dict[str, Any]) -> None:
            self.data = data

        def __getitem__(self, key: str) -> Any:
            return self.data[key]

    class Sub(dict):  # type: ignore[type-arg]
        pass

    model = get_service_model("ec2")
    checked = 0
    for operation in ("DescribeImageAttribute", "DeregisterImage", "DescribeImages", "DescribeSnapshots"):
        op = model.operation_model(operation)
        serializer = EC2Serializer(op, value_picker=XFormedAttributePicker())
        shape = op.output_shape
        for key, member in shape.members.items():
            context = AttributePickerContext(
                obj={}, key=key, shape=member, operation_model=op, service_model=model, key_path=""
            )
            names = list(dict.fromkeys(serializer._value_picker.get_possible_keys(context)))
            values: list[Any] = [{n: f"v{i}" for i, n in enumerate(names)}, {}, {names[0]: None}]
            values += [{n: n} for n in names] + [Sub({n: n}) for n in names] + [Mapping({n: n}) for n in names]
            obj = type("Obj", (), {})()
            for i, n in enumerate(names):
                setattr(obj, n, f"a{i}")
            values += [obj, type("Empty", (), {})()]
            for value in values:
                fast = fast_serialize.get_value(serializer, value, key, member)
                slow = fast_serialize._original_get_value(serializer, value, key, member)
                assert fast == slow, (operation, key, value)
                checked += 1
    assert checked > 100


_ANSWERS: list[tuple[Any, Any, Any]] = [
    (200, {"server": "amazon.com", "x-amzn-requestid": "r1"}, "<R>é</R>"),
    (200, {}, b"<R/>"),
    (400, {"status": "400", "server": "amazon.com"}, "<Response><Errors/></Response>"),
    (500, {"Access-Control-Allow-Origin": "https://x"}, ""),
    (200, {"access-control-allow-origin": ""}, "empty origin"),
    (201, {"Server": "a", "server": "b"}, "two spellings"),
    (511, {}, "the last named code"),
    (599, {}, "no name: delegated"),
    (204, {}, ""),
    (304, {"x": "y"}, ""),
    (200, {"Content-Type": "text/xml", "server": "amazon.com", "x-amzn-requestid": "r"}, "<R/>"),
    (200, {"server": "amazon.com", "content-type": "text/xml", "Content-Type": "a/b"}, "two types"),
    (200, {"content-length": "3"}, "abc"),
    (200, {"Location": "/a b"}, "moved"),
    (200, {"x-int": 5}, "int value"),
    (200, {"x-list": ["a", "b"]}, "list value"),
    (200, {"x": "a\r\nb"}, "newline: refused by werkzeug"),
    ("200 OK", {}, "status text"),
    (200, [("x", "y")], "header list"),
    (200, {}, bytearray(b"bytes-like")),
    (200, {}, ["an", "iterable"]),
]


@pytest.mark.parametrize("answer", _ANSWERS, ids=range(len(_ANSWERS)))
def test_plain_answers_are_sent_as_flask_s_response_sends_them(answer: tuple[Any, Any, Any]) -> None:
    """``direct_dispatch.plain_answer``: for each answer it takes, the status line, the header list
    and the body ``flask.Response`` plus the CORS header gives ``start_response``; the others it
    leaves to the Response (None)."""
    import copy

    from flask import Response
    from werkzeug.test import EnvironBuilder

    from werkzeug.http import HTTP_STATUS_CODES

    from ami_emulator.direct_dispatch import CORS_HEADER, plain_answer

    status, headers, content = answer
    plain = plain_answer(status, copy.deepcopy(headers), content)
    if headers == {"Content-Type": "text/xml", "server": "amazon.com", "x-amzn-requestid": "r"}:
        assert plain is not None  # the shape of moto's EC2 answers takes the fast path
    try:
        response = Response(response=content, status=status, headers=copy.deepcopy(headers))
        if not response.headers.get(CORS_HEADER[0]):
            response.headers.add(*CORS_HEADER)
        sent: list[Any] = []
        body = b"".join(response(EnvironBuilder(method="POST").get_environ(), lambda s, h, e=None: sent.append((s, h))))
    except ValueError:
        assert plain is None  # werkzeug refuses it; so must the fast path
        return
    if plain is None:
        # Only answers outside the plain shape are left to the Response.
        plainly = type(status) is int and type(headers) is dict and type(content) in (str, bytes)
        assert not plainly or status in (204, 304) or status not in HTTP_STATUS_CODES or any(
            k.lower() in ("content-length", "location") or type(v) is not str or "\n" in v
            for k, v in headers.items()
        ), answer
        return
    assert [(plain[0], plain[1])] == sent
    assert plain[2] == body


def test_the_account_of_a_key_is_looked_up_once_per_request_and_only_in_it() -> None:
    """``faults.account_lookup_kept_per_request``: inside a request, moto's lookup of the key the
    attribution looked up gets the attribution's answer without walking the IAM backends again;
    another key, and any lookup after the request (answered or failed), walks them."""
    from werkzeug.test import EnvironBuilder

    from ami_emulator import faults

    walks: list[str] = []

    def walk(key: str) -> str:
        walks.append(key)
        return {"AKIAKEPT000000000000": "111122223333", "AKIAOTHER00000000000": "444455556666"}.get(key, "123456789012")

    kept = faults.account_lookup_kept_per_request(walk)
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        # moto's get_current_account, while serving: the same key, then another one.
        seen.append((kept("AKIAKEPT000000000000"), kept("AKIAOTHER00000000000"), list(walks)))
        if environ.get("HTTP_X_FAIL"):
            raise RuntimeError("app failed")
        start_response("200 OK", [])
        return [b""]

    import moto.iam.models as iam_models

    saved = iam_models.get_account_id_from
    iam_models.get_account_id_from = kept  # what the attribution calls, as installed
    try:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        middleware = faults.FaultMiddleware(app, DomainDispatcherApplication(create_backend_app))
        auth = "AWS4-HMAC-SHA256 Credential=AKIAKEPT000000000000/20261203/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x"
        for fail in (False, True):
            walks.clear()
            headers = {"Authorization": auth, **({"X-Fail": "1"} if fail else {})}
            environ = EnvironBuilder(method="POST", path="/", headers=headers, data="Action=DescribeImages").get_environ()
            try:
                middleware(environ, lambda s, h, e=None: None)
            except RuntimeError:
                assert fail
            # Attribution walked once for AKIAKEPT000000000000; moto's lookup of it did not; AKIAOTHER00000000000 walked.
            assert seen[-1] == ("111122223333", "444455556666", ["AKIAKEPT000000000000", "AKIAOTHER00000000000"])
            assert faults._request_scope.account is None
            assert kept("AKIAKEPT000000000000") == "111122223333" and walks[-1] == "AKIAKEPT000000000000"  # after: walks
    finally:
        iam_models.get_account_id_from = saved


_ATTRIBUTED = [
    ("POST", "application/x-www-form-urlencoded; charset=utf-8", "", b"Action=DescribeImages&ImageId.1=ami-1&Empty="),
    ("POST", "application/x-www-form-urlencoded", "Action=FromQuery&X=1", b"Action=DescribeImages&X=2"),
    ("POST", "application/x-www-form-urlencoded", "", b""),
    ("POST", "text/plain; x-www-form-urlencoded", "", b"Action=DescribeImages"),
    ("POST", "application/x-amz-json-1.0", "", b'{"a": 1}'),
    ("GET", "application/x-www-form-urlencoded", "Action=DescribeImages&Version=2016-11-15", b""),
    ("POST", "application/x-www-form-urlencoded", "", "Action=DescribeImages&Name=\u00e9%20%ZZ".encode()),
]


@pytest.mark.parametrize("request_parts", _ATTRIBUTED, ids=range(len(_ATTRIBUTED)))
def test_the_gates_read_the_parameters_and_body_the_attribution_read(request_parts: tuple[str, str, str, bytes]) -> None:
    """The attribution hands the gates the form it read for the Action only when
    ``RequestContext.params`` would read the same, and the body read without a request object is
    ``werkzeug.Request.get_data``'s: both against a fresh context reading them itself."""
    import io

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from ami_emulator import faults, gates

    method, content_type, query, body = request_parts
    auth = "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE000000000/20261203/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x"

    def environ() -> dict[str, Any]:
        built = EnvironBuilder(
            method=method, path="/", query_string=query, headers={"Authorization": auth, "Content-Type": content_type}, data=body
        ).get_environ()
        return built

    middleware = faults.FaultMiddleware(lambda e, s: [], DomainDispatcherApplication(create_backend_app))
    ctx = middleware._attribute(environ())
    fresh = gates.RequestContext(environ(), ctx.account, ctx.service, ctx.action)
    assert ctx.params() == fresh.params()
    assert ctx.body() == fresh.body() == body
    for framing in ({}, {"CONTENT_LENGTH": "3"}, {"CONTENT_LENGTH": ""}, {"wsgi.input_terminated": True}):
        plain = {**environ(), **framing}
        plain["wsgi.input"] = io.BytesIO(body)
        other = {**plain, "wsgi.input": io.BytesIO(body)}

        def outcome(read: Any) -> Any:
            try:
                return read()
            except Exception as e:  # noqa: BLE001 - a short body: both must fail the same way
                return type(e)

        fast = outcome(lambda: gates.read_body(plain))
        assert fast == outcome(lambda: Request(other, populate_request=False).get_data(cache=False, parse_form_data=False))
        assert fast is not None


_ROOT_URL_ENVIRONS = [
    {},
    {"HTTP_HOST": "127.0.0.1:5000"},
    {"HTTP_HOST": "ec2.eu-west-1.amazonaws.com"},
    {"HTTP_HOST": "localhost:443", "wsgi.url_scheme": "https"},
    {"HTTP_HOST": "xn--bcher-kva.example:80"},
    {"HTTP_HOST": "h\u00fcst:1"},
    {"HTTP_HOST": "host", "SCRIPT_NAME": "/mounted/app"},
    {"HTTP_HOST": "host", "SCRIPT_NAME": "/a b/%2F/\u00e9"},
    {"SERVER_NAME": "10.0.0.1", "SERVER_PORT": "8080"},
    {"SERVER_NAME": "10.0.0.1", "SERVER_PORT": "443", "wsgi.url_scheme": "https"},
]


@pytest.mark.parametrize("extra", _ROOT_URL_ENVIRONS, ids=range(len(_ROOT_URL_ENVIRONS)))
def test_direct_requests_have_werkzeug_s_root_url_and_moto_s_raw_url(extra: dict[str, str]) -> None:
    """``DirectRequest.root_url`` (kept per scheme, host and root path) is werkzeug's, and so is
    every URL moto builds on it, on the first request and on one that finds it kept."""
    from moto.core.request import Request as MotoRequest
    from werkzeug.test import EnvironBuilder

    from ami_emulator.direct_dispatch import DirectRequest

    base = EnvironBuilder(method="POST", path="/", query_string="Action=X&a=%2F").get_environ()
    environ = {**base, **extra}
    if "HTTP_HOST" not in extra and "SERVER_NAME" in extra:
        environ.pop("HTTP_HOST", None)
    for _ in range(2):
        direct, plain = DirectRequest(dict(environ)), MotoRequest(dict(environ))
        assert (direct.root_url, direct.url_root, direct.raw_url, direct.url, direct.host_url) == (
            plain.root_url,
            plain.url_root,
            plain.raw_url,
            plain.url,
            plain.host_url,
        )


def test_direct_requests_hand_moto_the_headers_the_view_does() -> None:
    """``dict(request.headers.items())`` (``DirectDispatch``) is the ``dict(request.headers)``
    moto's Flask view passes: the same names, values and order, with S3 metadata names kept as
    sent, empty and repeated headers, and the content headers."""
    from werkzeug.test import EnvironBuilder

    from ami_emulator.direct_dispatch import DirectRequest

    headers = [
        ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
        ("X-Amz-Meta-My_Key", "under"),
        ("x-amz-meta-other-key", "dash"),
        ("X-Amz-Date", "20261203T000000Z"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIA/20261203/us-east-1/ec2/aws4_request"),
        ("X-Empty", ""),
        ("X-Twice", "one"),
        ("X-Twice", "two"),
    ]
    for extra in ({}, {"CONTENT_TYPE": ""}, {"CONTENT_LENGTH": ""}, {"HTTP_CONTENT_TYPE": "odd"}):
        environ = {**EnvironBuilder(method="POST", path="/", headers=headers, data=b"Action=X").get_environ(), **extra}
        # The preserved spelling of underscored S3 metadata names, as moto's MotoRequestHandler
        # records it on a real server.
        environ["moto.preserved_header_names"] = {"HTTP_X_AMZ_META_MY_KEY": "X-Amz-Meta-My_Key"}
        request = DirectRequest(environ)
        view = dict(request.headers)
        direct = dict(request.headers.items())
        assert list(direct.items()) == list(view.items()), extra
        assert direct["X-Amz-Meta-My_Key"] == "under"


_ENRICH_BODIES = [
    '<DescribeImagesResponse xmlns="x"><requestId>abc</requestId><imagesSet/></DescribeImagesResponse>',
    "<R><ResponseMetadata><RequestId>old-id</RequestId></ResponseMetadata></R>",
    "<R><RequestId></RequestId><RequestId>two</RequestId></R>",
    "<RequestId>\nacross lines\n</RequestId>",
    "<RequestId>no end",
    "",
    b"<RequestId>bytes</RequestId>",
    {"json": "body"},
    None,
]


@pytest.mark.parametrize("body", _ENRICH_BODIES, ids=range(len(_ENRICH_BODIES)))
@pytest.mark.parametrize("headers", [{}, {"status": 404, "x": "y"}])
def test_request_ids_are_put_in_bodies_as_moto_puts_them(body: Any, headers: dict[str, Any]) -> None:
    """``fast_dispatch.request_id_in_body``: the same headers and body as moto's
    ``_enrich_response`` for bodies with and without ``<RequestId>``, from the same random state."""
    from moto.core import responses
    from moto.moto_api._internal import mock_random

    from ami_emulator import apply_extensions, fast_dispatch

    apply_extensions()
    original = responses.BaseResponse._enrich_response.__wrapped__  # moto's, under the patch
    fast = fast_dispatch.request_id_in_body(original)
    mock_random.seed(17)
    slow_headers, slow_body = original(dict(headers), body)
    mock_random.seed(17)
    fast_headers, fast_body = fast(dict(headers), body)
    assert (fast_headers, fast_body) == (slow_headers, slow_body)
    assert len(fast_headers["x-amzn-requestid"]) == 52


def test_random_strings_keep_moto_s_pool_length_and_seeding() -> None:
    """``fast_dispatch.random_string``: moto's pool (letters, digits unless asked without, lower
    case when asked), its length, and a seed gives the same strings again."""
    import string

    from moto.moto_api._internal import mock_random

    from ami_emulator import apply_extensions

    apply_extensions()
    drawn = [mock_random.get_random_string(length=52) for _ in range(400)]
    assert all(len(s) == 52 and set(s) <= set(string.ascii_letters + string.digits) for s in drawn)
    assert set("".join(drawn)) == set(string.ascii_letters + string.digits)  # 20,800 draws of 62
    assert set(mock_random.get_random_string(length=500, include_digits=False)) <= set(string.ascii_letters)
    assert mock_random.get_random_string(length=300, lower_case=True).islower()
    assert mock_random.get_random_string() and len(mock_random.get_random_string()) == 20
    mock_random.seed(5)
    first = [mock_random.get_random_string(length=8) for _ in range(3)]
    mock_random.seed(5)
    assert [mock_random.get_random_string(length=8) for _ in range(3)] == first


def test_backend_lookups_create_and_register_as_moto_does_until_a_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fast_dispatch.backends_kept``: a dict answers an account's backend without moto's
    creation step only once moto's own lookup has created the account and registered the dict;
    a new account, and every account after ``reset``, goes through moto's lookup again, and the
    dicts are emptied and registered again as moto's own."""
    from moto.core.base_backend import BackendDict, BaseBackend

    from ami_emulator import fast_dispatch

    # moto's own lookup and reset (apply_extensions, run by other tests, installs the kept ones)
    getitem = getattr(BackendDict.__getitem__, "__wrapped__", BackendDict.__getitem__)
    reset = BackendDict.reset.__func__  # type: ignore[attr-defined]
    reset = getattr(reset, "__wrapped__", reset)
    monkeypatch.setattr(BackendDict, "_instances", [])  # only this test's dicts are reset

    class Plain(BackendDict):  # type: ignore[type-arg]
        pass

    Plain.__getitem__ = getitem  # type: ignore[method-assign]
    Plain.reset = classmethod(reset)  # type: ignore[method-assign, assignment]

    class Kept(Plain):
        pass

    fast_dispatch.backends_kept(Kept)
    created: dict[str, list[str]] = {"kept": [], "plain": []}
    create = BackendDict._create_account_specific_backend

    def counting(label: str) -> Any:
        def _create(self: Any, account_id: str) -> None:
            created[label].append(account_id)
            create(self, account_id)

        return _create

    monkeypatch.setattr(Kept, "_create_account_specific_backend", counting("kept"))
    monkeypatch.setattr(Plain, "_create_account_specific_backend", counting("plain"))
    kept, plain = Kept(BaseBackend, "ec2"), Plain(BaseBackend, "ec2")
    assert not BackendDict._instances
    firsts = {}
    for label, d in (("kept", kept), ("plain", plain)):
        first = firsts[label] = d["111122223333"]
        assert d in BackendDict._instances and first.account_id == "111122223333"
        for _ in range(2):  # two more lookups of the same account
            assert d["111122223333"] is first
        other = d["444455556666"]
        assert other is not first and other.account_id == "444455556666"
        assert sorted(d) == ["111122223333", "444455556666"]
    assert created["plain"] == ["111122223333"] * 3 + ["444455556666"]  # moto: every lookup
    assert created["kept"] == ["111122223333", "444455556666"]  # kept: the first of each account

    Kept.reset()  # moto's reset: every registered dict emptied, none registered
    assert BackendDict._instances == [] and len(kept) == 0 and len(plain) == 0
    # An account put in a dict without moto's lookup: the lookup still registers the dict.
    for d in (kept, plain):
        dict.__setitem__(d, "777788889999", firsts["plain"])
        assert d["777788889999"] is firsts["plain"] and d in BackendDict._instances
    dict.__delitem__(kept, "777788889999")
    again = kept["111122223333"]
    assert again is not firsts["kept"] and kept in BackendDict._instances
    assert created["kept"][-1] == "111122223333" and kept["111122223333"] is again
    assert created["kept"] == ["111122223333", "444455556666", "777788889999", "111122223333"]


def test_the_iam_global_context_is_fresh_per_call_and_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """``iam._global_context``: made once per (account, role, region, second), a new dict each
    call (callers merge into it), the time keys of the current second."""
    from ami_emulator import iam

    now = [1_800_000_000.9]
    monkeypatch.setattr(iam.time, "time", lambda: now[0])
    principal = iam.Principal("111122223333", "arn:aws:iam::111122223333:role/R", "AKIA")
    first = iam._global_context(principal, "eu-west-1")
    assert first["aws:epochtime"] == ("1800000000",) and first["aws:currenttime"] == ("2027-01-15T08:00:00Z",)
    assert first["aws:requestedregion"] == ("eu-west-1",) and first["aws:principalarn"] == (principal.role_arn,)
    first["ec2:region"] = ("x",)
    again = iam._global_context(principal, "eu-west-1")
    assert "ec2:region" not in again and again == {k: v for k, v in first.items() if k != "ec2:region"}
    assert iam._global_context(principal, "us-east-1")["aws:requestedregion"] == ("us-east-1",)
    now[0] += 1
    assert iam._global_context(principal, "eu-west-1")["aws:epochtime"] == ("1800000001",)


# ---------------------------------------------------------------------------------------------
# Differential checks of the speed-only request and response paths
# ---------------------------------------------------------------------------------------------

_HEADER_BLOCKS = [
    b"Host: x\r\nContent-Length: 3\r\nAuthorization: AWS4-HMAC-SHA256 Credential=a/b, Signature=ff\r\n\r\n",
    b"Host:x\r\nEmpty:\r\nTrail: a b  \r\nTab:\t\tv\r\n\r\n",
    b"A: 1\nB: 2\n\n",
    b"A: 1\r\n continued\r\n\r\n",  # folded: the email parser's
    b"From me\r\nA: 1\r\n\r\n",  # a Unix From line
    b"NoColon\r\n\r\n",
    b": empty name\r\n\r\n",
    b"A: caf\xe9\r\n\r\n",  # not US-ASCII
    b"A: x\ry\r\n\r\n",  # a bare CR
    b"Bad Name: 1\r\n\r\n",
    b"A: 1\r\n",  # no blank line
    b"\r\n",
    b"A: 1\r\nA: 2\r\n\r\nbody",
    b"A: a:b:c\r\n\r\n",
    b"Content-Type: multipart/form-data; boundary=x\r\n\r\n",  # the parser reads MIME parts
    b"Content-Type: multipart/mixed\r\n\r\n",
    b"content-type:  Message/rfc822\r\n\r\n",
    b"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\r\n",
]


def _message_state(message: Any) -> tuple[Any, ...]:
    payload = message._payload
    return (
        type(message),
        message._headers,
        [_message_state(part) for part in payload] if isinstance(payload, list) else payload,
        [type(d) for d in message.defects],
        message._unixfrom,
        message._charset,
        message._default_type,
        message.preamble,
        message.epilogue,
        message.policy,
        sorted(vars(message)),
    )


@pytest.mark.parametrize("block", _HEADER_BLOCKS)
def test_header_blocks_parse_as_the_email_parser_does(block: bytes) -> None:
    import http.client
    import io

    from ami_emulator import fast_http

    import email.message

    for message_class in (http.client.HTTPMessage, email.message.EmailMessage):
        fast = fast_http.parse_headers(io.BufferedReader(io.BytesIO(block)), message_class)
        slow = fast_http._original_parse_headers(io.BufferedReader(io.BytesIO(block)), message_class)
        assert _message_state(fast) == _message_state(slow)
        assert fast.is_multipart() == slow.is_multipart()


def test_xml_text_is_xmltodicts_for_random_documents() -> None:
    """``fast_serialize.unparse`` against ``xmltodict.unparse`` on 8,000 random documents: the
    same text, or the same error (bad names, several roots), for full documents and fragments."""
    import random

    import xmltodict

    from ami_emulator import fast_serialize

    rng = random.Random(1717)
    names = ["a", "Item", "requestId", "x-y", "ns:n", "b.c", "\u00dcn\u00ef", "_q", "bad name", "<x>"]

    def value(depth: int) -> Any:
        r = rng.random()
        if depth > 3 or r < 0.3:
            return rng.choice(["", "text", "a&b<c>\"'", "tab\tnl\n", None, True, False, 0, 17, 1.5, b"bytes", "  "])
        if r < 0.55:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if r < 0.6:
            return tuple(value(depth + 1) for _ in range(rng.randint(0, 2)))
        node: dict[str, Any] = {}
        for _ in range(rng.randint(0, 4)):
            key = rng.choice(names + ["@attr", "@q", "#text", "@xmlns", "#comment"])
            node[key] = value(depth + 1) if not key.startswith("@") else rng.choice(["v", None, 3, True, "a\"b'c", "x\ny", ""])
        return node

    def answer(fn: Any, body: Any, full: bool) -> tuple[Any, ...]:
        try:
            return ("text", fn(body, full_document=full, short_empty_elements=True, pretty=False))
        except Exception as exc:  # noqa: BLE001 - the error is part of the answer compared
            return ("error", type(exc), str(exc))

    outcomes = {"text": 0, "error": 0}
    for _ in range(4000):
        body = {rng.choice(names): value(0)}
        if rng.random() < 0.1:
            body[rng.choice(names)] = value(0)
        for full in (True, False):
            slow = answer(xmltodict.unparse, body, full)
            assert answer(fast_serialize.unparse, body, full) == slow, body
            outcomes[slow[0]] += 1
    assert outcomes["text"] > 4000 and outcomes["error"] > 100, outcomes


@pytest.fixture(scope="module")
def checked_server() -> Iterator[tuple[str, dict[str, int], list[str]]]:
    """A server of this process (the emulator's app and keep-alive handler) whose fast paths
    each also compute the slow answer for the same input and record any difference."""
    import http.client
    import io
    import threading

    import moto.core.serialize as moto_serialize
    import xmltodict
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    from ami_emulator import apply_extensions, fast_http, fast_serialize
    from ami_emulator.control import ControlMiddleware
    from ami_emulator.faults import FaultMiddleware
    from ami_emulator.keep_alive import KeepAliveRequestHandler

    apply_extensions()
    counts = {"headers": 0, "values": 0, "xml": 0, "dates": 0}
    differences: list[str] = []

    def headers(fp: Any, _class: type = http.client.HTTPMessage) -> Any:
        lines = http.client._read_headers(fp)
        block = b"".join(lines)
        fast = fast_http.parse_headers(io.BufferedReader(io.BytesIO(block)), _class)
        slow = fast_http._original_parse_headers(io.BufferedReader(io.BytesIO(block)), _class)
        counts["headers"] += 1
        if _message_state(fast) != _message_state(slow):
            differences.append(f"headers {block!r}")
        return fast

    def value(self: Any, obj: Any, key: str, shape: Any) -> Any:
        fast = fast_serialize.get_value(self, obj, key, shape)
        slow = fast_serialize._original_get_value(self, obj, key, shape)
        counts["values"] += 1
        if fast is not slow and fast != slow:
            differences.append(f"value of {key} in {'.'.join(self.path)}: {fast!r} != {slow!r}")
        return fast

    class CheckedXml:
        def __getattr__(self, name: str) -> Any:
            return getattr(xmltodict, name)

        @staticmethod
        def unparse(body: Any, *args: Any, **kwargs: Any) -> Any:
            fast = fast_serialize.unparse(body, *args, **kwargs)
            slow = xmltodict.unparse(body, *args, **kwargs)
            counts["xml"] += 1
            if fast != slow:
                differences.append(f"xml {slow!r} != {fast!r}")
            return fast

    class CheckedHandler(KeepAliveRequestHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            import time
            from email.utils import formatdate

            now = time.time() if timestamp is None else timestamp
            fast = super().date_time_string(now)
            counts["dates"] += 1
            if fast != formatdate(now, usegmt=True):
                differences.append(f"date {fast!r} at {now}")
            return fast

    saved = (http.client.parse_headers, moto_serialize.ResponseSerializer.get_value, moto_serialize.xmltodict)
    # Lists written directly put text xmltodict cannot take in the body; they are compared with
    # moto's whole answers by test_lists_written_directly_answer_as_moto_does instead.
    lists = fast_serialize.LISTS
    fast_serialize.LISTS = False
    http.client.parse_headers = headers
    moto_serialize.ResponseSerializer.get_value = value  # type: ignore[method-assign]
    moto_serialize.xmltodict = CheckedXml()  # type: ignore[assignment]
    app = ControlMiddleware(FaultMiddleware(DomainDispatcherApplication(create_backend_app)))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=CheckedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", counts, differences
    finally:
        server.shutdown()
        server.server_close()
        http.client.parse_headers, moto_serialize.ResponseSerializer.get_value, moto_serialize.xmltodict = saved
        fast_serialize.LISTS = lists


def test_fast_paths_answer_a_boto3_workload_as_the_slow_ones(checked_server: tuple[str, dict[str, int], list[str]]) -> None:
    """Images with tags, mappings and launch permissions, their attributes, snapshots, tags,
    references, deregistration with associated snapshots, and errors: every header block,
    member value and XML text the fast paths produced equals the slow path's."""
    endpoint, counts, differences = checked_server
    ec2 = Account(endpoint, "210987654321").ec2()
    snapshots = [make_snapshot(ec2, 1) for _ in range(3)]
    images = [register(ec2, f"diff-{n}", s) for n, s in enumerate(snapshots)]
    ec2.create_tags(Resources=images + snapshots, Tags=[{"Key": "family", "Value": "web & <api>"}, {"Key": "empty", "Value": ""}])
    ec2.modify_image_attribute(ImageId=images[0], LaunchPermission={"Add": [{"UserId": "123456789012"}, {"Group": "all"}]})
    ec2.enable_image_deprecation(ImageId=images[1], DeprecateAt="2031-01-01T00:00:00Z")
    ec2.describe_images(Owners=["self"])
    ec2.describe_images(ImageIds=images[:2])
    for attribute in ("launchPermission", "description", "bootMode", "deregistrationProtection"):
        ec2.describe_image_attribute(ImageId=images[0], Attribute=attribute)
    ec2.describe_snapshots(OwnerIds=["self"])
    ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": images}])
    ec2.describe_image_references(ImageIds=images, IncludeAllResourceTypes=True)
    with aws_error("InvalidAMIID.NotFound"):
        ec2.describe_images(ImageIds=["ami-0123456789abcdef0"])
    with aws_error("AuthFailure"):
        ec2.describe_image_attribute(ImageId=images[0], Attribute="blockDeviceMapping")
    result = ec2.deregister_image(ImageId=images[2], DeleteAssociatedSnapshots=True)
    assert result["DeleteSnapshotResults"] == [{"SnapshotId": snapshots[2], "ReturnCode": "success"}]
    with aws_error("InvalidSnapshot.InUse"):
        ec2.delete_snapshot(SnapshotId=snapshots[0])
    assert differences == []
    assert counts["headers"] >= 20 and counts["values"] >= 200 and counts["xml"] >= 20 and counts["dates"] >= 20, counts


# ---------------------------------------------------------------------------------------------
# EC2 Query requests without Flask (ami_emulator.direct_dispatch): the same answers as through it
# ---------------------------------------------------------------------------------------------

# The one part of an answer that differs between two runs from the same state and seed: times.
_TIMES = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")


ACCOUNT = "210987654322"


def _normalized(records: list[tuple[str, str, list[tuple[str, str]], bytes]]) -> list[Any]:
    """The EC2 answers with their times blanked (the clock moves on between the runs); the ids
    and request ids come from moto's seeded random, so everything else, every header included,
    must be equal."""
    # STS's AssumeRole goes through Flask on both servers: not what is compared.
    return [(action, status, headers, _TIMES.sub(b"TIME", body)) for action, status, headers, body in records if action != "AssumeRole"]


def _recorded(app: Any, records: list[Any]) -> Any:
    """``app`` with each answer's action, status, headers and body appended to ``records`` (or
    the exception it raised)."""
    from urllib.parse import parse_qs

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        seen: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"], seen["headers"] = status, list(headers)
            return start_response(status, headers, exc_info)

        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        action = parse_qs(raw.decode("utf-8", "replace")).get("Action", [environ.get("PATH_INFO", "")])[0]
        try:
            iterable = app(environ, capture)
        except Exception as e:  # the server answers 500; the exception is what is compared
            records.append((action, "raised", [], f"{type(e).__name__}: {e}".encode()))
            raise
        try:
            body = b"".join(iterable)
        finally:
            close = getattr(iterable, "close", None)
            if close:
                close()
        records.append((action, seen["status"], seen["headers"], body))
        return [body]

    return recording


def _ec2_workload(endpoint: str, account_id: str) -> None:
    """Reads, writes and refusals of the calls the functions make, plus raw requests boto3 would
    not send (an unknown action, and a known one plain, with an ``Origin`` header and with a
    private-network access request: CORS headers that depend on the request)."""
    ec2 = Account(endpoint, account_id).ec2()
    loose = Account(endpoint, account_id).client("ec2", validate=False)
    snapshots = [make_snapshot(ec2, 1) for _ in range(3)]
    images = [register(ec2, f"direct-{n}", s) for n, s in enumerate(snapshots)]
    ec2.create_tags(Resources=images + snapshots, Tags=[{"Key": "family", "Value": "web & <api>"}])
    ec2.modify_image_attribute(ImageId=images[0], LaunchPermission={"Add": [{"UserId": "123456789012"}]})
    ec2.enable_image_deprecation(ImageId=images[1], DeprecateAt="2031-01-01T00:00:00Z")
    ec2.describe_images(Owners=["self"])
    ec2.describe_images(Filters=[{"Name": "tag:family", "Values": ["web & <api>"]}], MaxResults=6)
    ec2.describe_image_attribute(ImageId=images[0], Attribute="launchPermission")
    ec2.describe_snapshots(OwnerIds=["self"])
    ec2.describe_image_references(ImageIds=images, IncludeAllResourceTypes=True)
    with aws_error("InvalidAMIID.NotFound"):
        ec2.describe_images(ImageIds=["ami-0123456789abcdef0"])
    with aws_error("InvalidParameterValue"):
        loose.describe_image_attribute(ImageId=images[0], Attribute="noSuchAttribute")
    with aws_error("InvalidSnapshot.InUse"):
        ec2.delete_snapshot(SnapshotId=snapshots[0])
    ec2.deregister_image(ImageId=images[2], DeleteAssociatedSnapshots=True)
    with aws_error("InvalidAMIID.Unavailable"):
        ec2.deregister_image(ImageId=images[2])
    for action in ("NoSuchAction", "DescribeRegions"):
        form = {"Action": action, "Version": "2016-11-15"}
        plain = _post(endpoint, form, {})
        assert _post(endpoint, form, {"Origin": "https://example.com"}) == plain
        assert _post(endpoint, form, {"Access-Control-Request-Private-Network": "true"}) == plain


def _post(endpoint: str, form: dict[str, str] | list[tuple[str, str]], headers: dict[str, str], path: str = "/") -> int:
    request = urllib.request.Request(
        endpoint + path,
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20261202/us-east-1/ec2/aws4_request, "
            "SignedHeaders=host, Signature=00",
            **headers,
        },
    )
    try:
        with urllib.request.urlopen(request) as response:  # noqa: S310 (loopback only)
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _exchange(app: Any, dispatcher: Any, workload: Callable[[str, str], None]) -> list[Any]:
    """The normalized answers of ``workload`` run against a server of ``app`` (behind the
    emulator's middleware and keep-alive handler), from moto's reset state and random seed."""
    import threading

    from moto.moto_api._internal import mock_random
    from werkzeug.serving import make_server

    from ami_emulator.control import ControlMiddleware
    from ami_emulator.faults import FaultMiddleware
    from ami_emulator.keep_alive import KeepAliveRequestHandler

    records: list[Any] = []
    server = make_server(
        "127.0.0.1",
        0,
        ControlMiddleware(FaultMiddleware(_recorded(app, records), dispatcher)),
        threaded=True,
        request_handler=KeepAliveRequestHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}"
        # Every exchange starts from the same state (this process's moto and the emulator's own
        # settings, reset) with the same random draws.
        assert _post(endpoint, {}, {}, "/moto-api/reset") == 200
        mock_random.seed(1717)
        records.clear()
        workload(endpoint, ACCOUNT)
        return _normalized(records)
    finally:
        server.shutdown()
        server.server_close()


def test_ec2_requests_without_flask_are_answered_as_through_it() -> None:
    """The same boto3 workload, from the same state and random seed, through a server with
    ``DirectDispatch`` and one without: every answer, status, headers and body, is the same once
    times are blanked; and the direct path did serve the EC2 requests (no Flask
    request context was pushed for them)."""
    import flask
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from ami_emulator import apply_extensions
    from ami_emulator.direct_dispatch import DirectDispatch

    apply_extensions()
    dispatcher = DomainDispatcherApplication(create_backend_app)
    pushed = {"count": 0}
    original_push = flask.ctx.RequestContext.push

    def counting_push(self: Any) -> None:
        pushed["count"] += 1
        original_push(self)

    exchanges = {}
    flask.ctx.RequestContext.push = counting_push  # type: ignore[method-assign]
    try:
        # The first exchange of a fresh process draws its ids in another order (backends are made
        # lazily, with random ids of their own), so it only warms up.
        for name, app in (("warm-up", dispatcher), ("flask", dispatcher), ("direct", DirectDispatch(dispatcher))):
            before = pushed["count"]
            answers = _exchange(app, dispatcher, _ec2_workload)
            exchanges[name] = (answers, pushed["count"] - before)
    finally:
        flask.ctx.RequestContext.push = original_push  # type: ignore[method-assign]
    (flask_answers, flask_pushes), (direct_answers, direct_pushes) = exchanges["flask"], exchanges["direct"]
    assert len(flask_answers) == len(direct_answers) >= 20
    for through_flask, direct in zip(flask_answers, direct_answers):
        assert direct == through_flask
    # Through Flask, every request the app served pushed a context: the answers compared, the
    # two STS AssumeRole calls and moto's reset before the workload (the unknown actions are
    # refused by the api_rules gate before the app). Directly, only AssumeRole, the two CORS
    # requests and the reset did.
    assert (flask_pushes, direct_pushes) == (len(flask_answers) + 3, 5), (flask_pushes, direct_pushes, len(flask_answers))


def _list_workload(endpoint: str, account_id: str) -> None:
    """``_ec2_workload`` and answers made of lists of structures in other shapes: instances
    (reservations, groups, mappings, tags and none, timestamps), volumes with attachments, launch template
    versions, security groups (nested permission lists), tags, regions and zones, empty lists,
    and an image whose mappings and tags are all there is to it."""
    _ec2_workload(endpoint, account_id)
    ec2 = Account(endpoint, account_id).ec2()
    snapshot = make_snapshot(ec2, 1)
    image = register(ec2, "lists-0", snapshot)
    ec2.create_tags(Resources=[image], Tags=[{"Key": f"k{n}", "Value": "v & <w>" if n % 2 else ""} for n in range(4)])
    run = ec2.run_instances(
        ImageId=image, MinCount=2, MaxCount=2, InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "role", "Value": "web"}]}],
    )
    untagged = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    ec2.describe_instances()
    ec2.describe_instances(InstanceIds=[run["Instances"][0]["InstanceId"], untagged])
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=2)["VolumeId"]
    ec2.describe_volumes()
    ec2.describe_volumes(VolumeIds=[volume])
    ec2.create_launch_template(LaunchTemplateName="lists", LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"})
    ec2.describe_launch_template_versions(LaunchTemplateName="lists")
    group = ec2.create_security_group(GroupName="lists", Description="lists")["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "a & b"}]}],
    )
    ec2.describe_security_groups(GroupIds=[group])
    ec2.describe_tags()
    ec2.describe_regions()
    ec2.describe_availability_zones()
    ec2.describe_images(ImageIds=[image])
    ec2.describe_images(Filters=[{"Name": "name", "Values": ["no-such-image"]}])
    ec2.describe_snapshots(SnapshotIds=[snapshot])
    ec2.describe_image_references(ImageIds=[image], IncludeAllResourceTypes=True)


def test_lists_written_directly_answer_as_moto_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fast_serialize._serialize_type_list``: the same boto3 workload, from the same state and
    random seed, with EC2's lists of structures written directly and with every list through
    moto's serializer: every answer, status, headers and body, is the same once times are
    blanked; and the direct path wrote the lists of the describes (images, instances, volumes,
    snapshots, tags, groups...)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from ami_emulator import apply_extensions, fast_serialize
    from ami_emulator.direct_dispatch import DirectDispatch

    apply_extensions()
    dispatcher = DomainDispatcherApplication(create_backend_app)
    app = DirectDispatch(dispatcher)
    written: Counter[str] = Counter()
    structure = fast_serialize._structure

    def counting(self: Any, parts: list[str], value: Any, shape: Any, tag: str, in_list: bool) -> None:
        if in_list:
            written[shape.name] += 1
        structure(self, parts, value, shape, tag, in_list)

    monkeypatch.setattr(fast_serialize, "_structure", counting)
    answers = {}
    for name, lists in (("warm-up", False), ("moto", False), ("direct", True)):
        monkeypatch.setattr(fast_serialize, "LISTS", lists)
        written.clear()
        answers[name] = _exchange(app, dispatcher, _list_workload)
    assert len(answers["moto"]) == len(answers["direct"]) >= 40
    # RunInstances' client token is a uuid4 of Python's own random, not moto's seeded one.
    token = re.compile(rb"<clientToken>[0-9a-f-]{36}</clientToken>")
    for through_moto, direct in zip(answers["moto"], answers["direct"]):
        blank = lambda answer: (*answer[:3], token.sub(b"<clientToken/>", answer[3]))  # noqa: E731
        assert blank(direct) == blank(through_moto)
    for shape in ("Image", "BlockDeviceMapping", "Tag", "Reservation", "Instance", "Volume", "Snapshot", "TagDescription", "SecurityGroup", "IpPermission", "Region"):
        assert written[shape] > 0, (shape, written)


@pytest.mark.parametrize("kwargs", [{"pretty": True}, {"short_empty_elements": False}, {"full_document": True, "comment_key": "//"}])
def test_an_answer_with_lists_written_ahead_is_never_handed_to_xmltodict(kwargs: dict[str, Any]) -> None:
    """``unparse`` hands what its writer does not cover to xmltodict, which would escape text
    written ahead as a value: such an answer raises instead, whichever way it would be handed
    over; the same body without it still goes to xmltodict."""
    from ami_emulator import fast_serialize

    options = {"full_document": False, "short_empty_elements": True, **kwargs}
    with pytest.raises(RuntimeError, match="pre-written XML"):
        fast_serialize.unparse({"r": {"imagesSet": fast_serialize._Raw("<item><imageId>a</imageId></item>")}}, **options)
    assert "imagesSet" in fast_serialize.unparse({"r": {"imagesSet": {"item": [{"imageId": "a"}]}}}, **options)


class _Picked:
    """An object moto's value picker reads by attribute (as it reads its models)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


_NOW = datetime(2026, 12, 3, 12, 0, 0, 123000, tzinfo=timezone.utc)
# DescribeImages results with values at the edges of moto's serializer: None entries, entries
# with nothing to write, empty and all-empty lists, booleans given as text or numbers, numbers
# as text, text to escape, empty text, timestamps, the CreationDate transformer, nested
# structures empty and not, objects beside dicts.
_LIST_EDGES: list[Any] = [
    [],
    [None],
    [None, {}, {"ImageId": None}],
    [{"ImageId": ""}, {"ImageId": "ami-1 & <2>", "Name": "\u00e9\u00e8"}],
    [{"Public": "True"}, {"Public": "false"}, {"Public": 1}, {"Public": True}, {"EnaSupport": "TRUE"}],
    [{"BlockDeviceMappings": []}, {"BlockDeviceMappings": [None, {}]}, {"BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {}}]}],
    [{"BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": "08", "DeleteOnTermination": "true", "Iops": 3000.0}}]}],
    [{"Tags": [{"Key": "k", "Value": ""}, {"Key": "", "Value": "v"}, {}]}, {"ProductCodes": [{"ProductCodeId": "x"}]}],
    [{"StateReason": {}}, {"StateReason": {"Code": "c", "Message": "m & n"}}],
    [{"CreationDate": _NOW}, {"CreationDate": "2025-01-02T03:04:05.123Z"}],
    [{"ScanResults": {"FindingScanDate": _NOW}}, {"ImageWatermarks": [{"SourceImageCreationTime": _NOW}]}],
    [_Picked(id="ami-1", name="n", public=True, tags=[{"Key": "a", "Value": "b"}], creation_date="2025-01-02T03:04:05.000Z")],
]


@pytest.mark.parametrize("images", _LIST_EDGES)
def test_lists_written_directly_match_moto_at_the_edges(images: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The DescribeImages answer of each edge list, through EC2's serializer with the lists
    written directly and with moto's: the same body."""
    from moto.core.responses import ActionContext, ActionResult
    from moto.core.serialize import EC2Serializer
    from moto.core.utils import get_service_model
    from moto.ec2.responses import EC2Response

    from ami_emulator import apply_extensions, fast_serialize

    apply_extensions()
    operation = get_service_model("ec2").operation_model("DescribeImages")
    context = ActionContext(operation.service_model, operation, EC2Serializer, EC2Response())
    calls = []
    structure = fast_serialize._structure

    def counting(self: Any, parts: list[str], value: Any, shape: Any, tag: str, in_list: bool) -> None:
        calls.append(shape.name)
        structure(self, parts, value, shape, tag, in_list)

    monkeypatch.setattr(fast_serialize, "_structure", counting)
    bodies = []
    for lists in (False, True):
        monkeypatch.setattr(fast_serialize, "LISTS", lists)
        status, headers, body = ActionResult({"Images": images}).execute_result(context)
        bodies.append((status, body if isinstance(body, str) else body.decode()))
    moto_answer, direct = bodies
    assert direct == moto_answer
    assert "imagesSet" in direct[1]
    # Only the direct run wrote lists, one call for each image at least.
    assert calls.count("Image") == len(images)


# ---------------------------------------------------------------------------------------------
# A cleanup's per-image calls set up and answered without moto's generic layers (fast_lane)
# ---------------------------------------------------------------------------------------------

_FORM_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
# Requests the lane serves: (body, extra environ).
_LANE_SERVED: list[tuple[str, dict[str, str]]] = [
    ("Action=DescribeImageAttribute&Version=2016-11-15&ImageId=ami-0123456789abcdef0&Attribute=launchPermission", {}),
    ("Version=2016-11-15&Attribute=description&Action=DescribeImageAttribute&ImageId=ami-1&DryRun=true", {}),
    ("Action=DescribeImageAttribute&Version=2016-11-15&ImageId=ami%2D1%20x&Attribute=", {}),
    ("Action=DescribeImageAttribute&ImageId=ami-1", {"CONTENT_TYPE": "Application/X-WWW-Form-Urlencoded"}),
    ("Action=DeregisterImage&Version=2016-11-15&ImageId=ami-1&DeleteAssociatedSnapshots=true", {}),
    ("Action=DeregisterImage&Version=2016-11-15&ImageId=ami-1&DeleteAssociatedSnapshots=false&DryRun=false", {}),
    ("Action=DeregisterImage&Version=2016-11-15&ImageId=ami-1", {"HTTP_USER_AGENT": "aws-sdk-rust/1.3 os/linux region/eu-west-1"}),
    ("Action=DeleteSnapshot&Version=2016-11-15&SnapshotId=snap-1", {}),
    ("Action=DeleteSnapshot&SnapshotId=snap-%C3%A9", {}),  # ASCII on the wire
    ("Action=DeleteSnapshot&Version=2016-11-15&SnapshotId=snap-1", {"HTTP_HOST": "ec2.ap-southeast-2.amazonaws.com"}),
]
# Requests it leaves to moto, each for one reason.
_LANE_REFUSED: list[tuple[str, dict[str, str]]] = [
    ("Action=DescribeImages&Version=2016-11-15&Owner.1=self", {}),  # another action
    ("Action=DescribeImageAttribute&ImageId=ami-1&ImageId=ami-2&Attribute=description", {}),  # twice
    ("Action=DeregisterImage&ImageId=ami-1&Filter.1.Name=x", {}),  # not a member
    ("Action=DeregisterImage&ImageId=ami-1&DeleteAssociatedSnapshots=True", {}),  # not true/false
    ("Action=DeregisterImage&ImageId=ami-1&DeleteAssociatedSnapshots=1", {}),
    ("Action=DeleteSnapshot&SnapshotId=snap-\u00e9", {}),  # not ASCII
    ("Action=DeleteSnapshot&SnapshotId=snap-1", {"QUERY_STRING": "Action=DeleteSnapshot"}),
    ("Action=DeleteSnapshot&SnapshotId=snap-1", {"HTTP_CONTENT_ENCODING": "identity"}),
    ("Action=DeleteSnapshot&SnapshotId=snap-1", {"CONTENT_TYPE": "application/json"}),
    ("Action=DeleteSnapshot&SnapshotId=snap-1", {"REQUEST_METHOD": "PUT"}),
    ("", {}),
]


def _lane_environ(body: str, extra: dict[str, str]) -> dict[str, Any]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from werkzeug.test import EnvironBuilder

    data = body.encode("utf-8")
    signed = AWSRequest(method="POST", url="http://localhost:5000/", data=data, headers={"Content-Type": _FORM_TYPE})
    SigV4Auth(Credentials("AKIAIOSFODNN7EXAMPLE", "secret"), "ec2", "us-east-1").add_auth(signed)
    environ = EnvironBuilder(method="POST", path="/", base_url="http://localhost:5000", headers=dict(signed.headers), data=data).get_environ()
    environ["SERVER_SOFTWARE"] = "Werkzeug/3.1"
    environ.update(extra)
    return environ


def _response_state(response: Any) -> dict[str, Any]:
    """A response object's attributes, the request-bound ones by what they hold."""
    state = dict(vars(response))
    state.pop("serialized", None)  # the lane's own serializer for the request
    state["normalized_request"] = type(state["normalized_request"]).__name__
    state["headers"] = list(state["headers"].items())
    state["form_data"] = (type(state["form_data"]).__name__, list(state["form_data"].items(multi=True)))
    state["params"] = list(state["params"].items())  # the order too
    return state


@pytest.mark.parametrize("body, extra", _LANE_SERVED + _LANE_REFUSED, ids=range(len(_LANE_SERVED + _LANE_REFUSED)))
def test_the_lane_sets_up_a_response_as_setup_class_does(body: str, extra: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """For each request the lane serves, the response object it sets up has every attribute
    moto's ``setup_class`` gives it, equal, and the caller's visit is recorded with IAM alike;
    every other request is left to moto untouched (its body still unread, nothing recorded)."""
    import moto.iam.models
    from moto.ec2.responses import EC2Response

    from ami_emulator import apply_extensions, fast_lane
    from ami_emulator.direct_dispatch import DirectRequest

    apply_extensions()
    visits: list[dict[str, Any]] = []
    monkeypatch.setattr(fast_lane, "mark_account_as_visited", lambda **kwargs: visits.append(kwargs))
    monkeypatch.setattr(moto.iam.models, "mark_account_as_visited", lambda **kwargs: visits.append(kwargs))
    served = (body, extra) in _LANE_SERVED
    lane_environ = _lane_environ(body, extra)
    lane_request = DirectRequest(lane_environ)
    lane = fast_lane.set_up(EC2Response, lane_request, lane_environ, lane_request.raw_url)
    if not served:
        assert lane is None
        assert lane_environ["wsgi.input"].tell() == 0
        assert visits == []
        return
    assert lane is not None
    moto_environ = _lane_environ(body, extra)
    moto_request = DirectRequest(moto_environ)
    moto = EC2Response()
    moto.setup_class(moto_request, moto_request.raw_url, dict(moto_request.headers.items()))
    assert _response_state(lane) == _response_state(moto)
    assert len(visits) == 2 and visits[0] == visits[1], visits


def _lane_workload(endpoint: str, account_id: str) -> None:
    """The lane's three actions in every outcome the cleanup and aws-amicleaner meet: launch
    permissions of each kind and none, other attributes, snapshot results of each code, dry
    runs, unknown, malformed and protected images, snapshots in use and gone, a role without
    DeleteSnapshot on a snapshot; plus a form the lane leaves to moto."""
    owner = Account(endpoint, account_id)
    ec2 = owner.ec2()
    loose = owner.client("ec2", validate=False)
    snapshots = [make_snapshot(ec2, 1) for _ in range(6)]
    alone = register(ec2, "lane-alone", snapshots[0], Description='web & <api> "quoted"')
    pair = ec2.register_image(Name="lane-pair", RootDeviceName="/dev/xvda", BlockDeviceMappings=_mapping(snapshots[1], snapshots[2]))["ImageId"]
    sharer = register(ec2, "lane-sharer", snapshots[2])
    protected = register(ec2, "lane-protected", snapshots[3])
    ec2.modify_image_attribute(
        ImageId=alone,
        LaunchPermission={
            "Add": [
                {"UserId": "123456789012"},
                {"Group": "all"},
                {"OrganizationArn": "arn:aws:organizations::123456789012:organization/o-abcdefghij"},
                {"OrganizationalUnitArn": "arn:aws:organizations::123456789012:ou/o-abcdefghij/ou-ab12-cdefghij"},
            ]
        },
    )
    for image_id in (alone, pair):
        ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    for attribute in ("description", "bootMode", "imdsSupport", "lastLaunchedTime", "deregistrationProtection", "productCodes"):
        ec2.describe_image_attribute(ImageId=alone, Attribute=attribute)
    for code, call in (
        ("DryRunOperation", lambda: ec2.describe_image_attribute(ImageId=alone, Attribute="launchPermission", DryRun=True)),
        ("InvalidAMIID.NotFound", lambda: ec2.describe_image_attribute(ImageId="ami-0123456789abcdef0", Attribute="launchPermission")),
        ("AuthFailure", lambda: ec2.describe_image_attribute(ImageId=alone, Attribute="blockDeviceMapping")),
        ("InvalidParameterValue", lambda: loose.describe_image_attribute(ImageId=alone, Attribute="noSuchAttribute")),
        ("DryRunOperation", lambda: ec2.deregister_image(ImageId=alone, DryRun=True)),
        ("DryRunOperation", lambda: ec2.delete_snapshot(SnapshotId=snapshots[5], DryRun=True)),
    ):
        with aws_error(code):
            call()
    ec2.enable_image_deregistration_protection(ImageId=protected)
    with aws_error("OperationNotPermitted"):
        ec2.deregister_image(ImageId=protected, DeleteAssociatedSnapshots=True)
    assert [r["ReturnCode"] for r in ec2.deregister_image(ImageId=pair, DeleteAssociatedSnapshots=True)["DeleteSnapshotResults"]] == ["success", "skipped"]
    with aws_error("InvalidSnapshot.InUse"):
        ec2.delete_snapshot(SnapshotId=snapshots[2])
    ec2.deregister_image(ImageId=sharer, DeleteAssociatedSnapshots=False)
    ec2.delete_snapshot(SnapshotId=snapshots[2])
    with aws_error("InvalidSnapshot.NotFound"):
        ec2.delete_snapshot(SnapshotId=snapshots[2])
    with aws_error("InvalidAMIID.Unavailable"):
        ec2.deregister_image(ImageId=pair)
    with aws_error("InvalidAMIID.Malformed"):
        loose.deregister_image(ImageId="not-an-image")
    # A role that may deregister but delete only the snapshots tagged managed.
    ec2.create_tags(Resources=[snapshots[4]], Tags=[{"Key": "managed", "Value": "true"}])
    both = ec2.register_image(Name="lane-role", RootDeviceName="/dev/xvda", BlockDeviceMappings=_mapping(snapshots[4], snapshots[5]))["ImageId"]
    role = restrict(
        owner,
        "lane-cleaner",
        doc(
            allow(["ec2:DeregisterImage", "ec2:DescribeImageAttribute"], "*"),
            allow("ec2:DeleteSnapshot", "*", {"StringEquals": {"aws:ResourceTag/managed": "true"}}),
        ),
    ).ec2()
    role.describe_image_attribute(ImageId=both, Attribute="launchPermission")
    with aws_error("UnauthorizedOperation"):
        role.delete_snapshot(SnapshotId=snapshots[5])
    results = role.deregister_image(ImageId=both, DeleteAssociatedSnapshots=True)["DeleteSnapshotResults"]
    assert [r["ReturnCode"] for r in results] == ["success", "missing-permissions"]
    # A form the lane leaves to moto (the parameter twice).
    _post(endpoint, [("Action", "DeleteSnapshot"), ("Version", "2016-11-15"), ("SnapshotId", snapshots[5]), ("SnapshotId", "snap-1")], {})


def test_the_lane_answers_its_calls_as_moto_does() -> None:
    """The lane's workload, from the same state and random seed, through a server with the lane
    and one without: every answer, status, headers and body, is the same once times are
    blanked; and the lane did set up its requests and write the successful answers."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from ami_emulator import apply_extensions, fast_lane
    from ami_emulator.direct_dispatch import DirectDispatch

    apply_extensions()
    dispatcher = DomainDispatcherApplication(create_backend_app)
    used = {"set up": 0, "written": 0}
    original_set_up, original_xml = fast_lane.set_up, fast_lane._xml

    def counting_set_up(*args: Any) -> Any:
        response = original_set_up(*args)
        used["set up"] += response is not None
        return response

    def counting_xml(*args: Any) -> Any:
        body = original_xml(*args)
        used["written"] += body is not None
        return body

    exchanges = {}
    fast_lane.set_up, fast_lane._xml = counting_set_up, counting_xml  # type: ignore[assignment]
    try:
        for name, lane in (("warm-up", False), ("moto", False), ("lane", True)):
            before = dict(used)
            answers = _exchange(DirectDispatch(dispatcher, lane=lane), dispatcher, _lane_workload)
            exchanges[name] = (answers, {k: used[k] - before[k] for k in used})
    finally:
        fast_lane.set_up, fast_lane._xml = original_set_up, original_xml  # type: ignore[assignment]
    (moto_answers, moto_use), (lane_answers, lane_use) = exchanges["moto"], exchanges["lane"]
    assert len(moto_answers) == len(lane_answers) >= 30
    for through_moto, through_lane in zip(moto_answers, lane_answers):
        assert through_lane == through_moto
    assert moto_use == {"set up": 0, "written": 0}
    # Of the workload's 26 requests of the three actions, the lane set up the 23 that reached
    # the app in the plain form (the api_rules gate refuses the unknown attribute and the IAM
    # gate the role's DeleteSnapshot first; the doubled parameter goes to moto), and wrote every
    # one of the 13 that succeeded (attribute values, launch permissions, product codes and
    # snapshot results included).
    assert lane_use == {"set up": 23, "written": 13}, lane_use


_UNWRITTEN = [
    {"ImageId": 7},  # a number in a string member
    {"ImageId": None},
    {"ImageId": ""},
    {"ImageId": "ami-1", "Extra": "x"},  # not a member
    {"image_id": "ami-1"},  # another spelling moto's picker would find
    {"ImageId": "ami-1", "LaunchPermissions": ({"UserId": "1"},)},  # a tuple, not a list
    {"ImageId": "ami-1", "LaunchPermissions": ["all"]},  # entries that are not structures
    {"ImageId": "ami-1", "LastLaunchedTime": {"Value": __import__("datetime").datetime(2026, 1, 1)}},
    {"ImageId": "ami-1", "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {}}]},  # nested
    ["ami-1"],
]


@pytest.mark.parametrize("result", _UNWRITTEN, ids=range(len(_UNWRITTEN)))
def test_the_lane_leaves_results_it_cannot_write_to_moto(result: Any) -> None:
    """A DescribeImageAttribute result the lane does not write exactly as moto would is left
    to moto's serializer (``_xml`` answers None), while the same result made plain is written."""
    from ami_emulator import fast_lane

    op = fast_lane._operation("DescribeImageAttribute")
    assert fast_lane._xml(op, result, frozenset()) is None
    assert fast_lane._xml(op, {"ImageId": "ami-1", "LaunchPermissions": [{"UserId": "1"}]}, frozenset()) is not None
    # A member a response transformer names is left to moto too.
    assert fast_lane._xml(op, {"ImageId": "ami-1"}, frozenset({"ImageId"})) is None
