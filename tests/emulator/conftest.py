"""pytest fixtures: start the real emulator (``tests/emulator/serve``) once per session and give
each test its own AWS account.

* ``emulator``: the base URL of an emulator started on a free port through ``serve``. If it does
  not come up the fixture raises, so every test errors (never skips). It is stopped at the end.
  With ``AMI_EMULATOR_TEST_ENDPOINT=http://127.0.0.1:PORT`` the suite uses that server instead.
* ``account``: a fresh random 12-digit account reached through STS AssumeRole (moto isolates
  accounts by the access key AssumeRole returns), with helpers for boto3 clients and for the
  ``/ami-pipeline-emulator/`` control endpoints.

The emulator is started with ``AMI_EMULATOR_IMPORT_DELAY_SECONDS=1`` (``SERVER_IMPORT_DELAY``) so
a test can check that the environment default reaches the server.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.config import Config

from emu_helpers import SERVER_IMPORT_DELAY

HERE = Path(__file__).resolve().parent
SERVE = HERE / "serve"
STARTUP_TIMEOUT = float(os.environ.get("AMI_EMULATOR_TEST_STARTUP_TIMEOUT", "600"))
BOTO_CONFIG = Config(retries={"max_attempts": 2, "mode": "standard"}, read_timeout=60)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
        return json.loads(response.read())


@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    external = os.environ.get("AMI_EMULATOR_TEST_ENDPOINT")
    if external:
        # Run the suite against a server started elsewhere (e.g. a plain moto server, to see
        # which tests need the extensions). Nothing is started or stopped here.
        yield external.rstrip("/")
        return
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="ami-emulator-", suffix=".log", delete=False)
    env = dict(os.environ)
    env["AMI_EMULATOR_IMPORT_DELAY_SECONDS"] = str(SERVER_IMPORT_DELAY)
    env.pop("AMI_EMULATOR_COPY_DELAY_SECONDS", None)
    env.pop("MOTO_ACCOUNT_ID", None)  # would force one account for every request
    proc = subprocess.Popen(
        [str(SERVE), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )

    def log_tail() -> str:
        log.flush()
        return Path(log.name).read_text(errors="replace")[-4000:]

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"emulator exited with code {proc.returncode} before it was ready; log {log.name}:\n{log_tail()}"
            )
        try:
            health = _get_json(f"{base}/ami-pipeline-emulator/health")
            if health.get("status") == "ok":
                break
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"emulator not ready after {STARTUP_TIMEOUT}s; log {log.name}:\n{log_tail()}")
        time.sleep(0.2)
    try:
        yield base
    finally:
        stop_server(proc)
        log.close()


def stop_server(proc: subprocess.Popen[Any]) -> None:
    """Stops a server started through ``serve``: SIGTERM, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


_used_accounts: set[str] = set()


def _new_account_id() -> str:
    while True:
        candidate = str(random.SystemRandom().randint(10**11, 10**12 - 1))
        if candidate not in _used_accounts and candidate != "123456789012":
            _used_accounts.add(candidate)
            return candidate


class Account:
    """One isolated AWS account in the emulator."""

    def __init__(self, endpoint: str, account_id: str) -> None:
        self.endpoint = endpoint
        self.id = account_id
        sts = boto3.client(
            "sts",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=BOTO_CONFIG,
        )
        creds = sts.assume_role(
            RoleArn=f"arn:aws:iam::{account_id}:role/ami-emulator-test", RoleSessionName="pytest"
        )["Credentials"]
        self._creds = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
        self._clients: dict[tuple[str, str, bool], Any] = {}

    def client(
        self, service: str, region: str = "us-east-1", validate: bool = True, config: Config | None = None
    ) -> Any:
        """A boto3 client of this account; ``validate=False`` skips botocore's client-side
        parameter checks so the emulator's own validation can be exercised; ``config`` (e.g. other
        retry settings) is merged over the suite's default and gives an uncached client."""
        if config is not None:
            merged = BOTO_CONFIG.merge(config)
            if not validate:
                merged = merged.merge(Config(parameter_validation=False))
            return boto3.client(service, endpoint_url=self.endpoint, region_name=region, config=merged, **self._creds)
        key = (service, region, validate)
        if key not in self._clients:
            config = BOTO_CONFIG if validate else BOTO_CONFIG.merge(Config(parameter_validation=False))
            self._clients[key] = boto3.client(
                service, endpoint_url=self.endpoint, region_name=region, config=config, **self._creds
            )
        return self._clients[key]

    def ec2(self, region: str = "us-east-1") -> Any:
        return self.client("ec2", region)

    def s3(self, region: str = "us-east-1") -> Any:
        return self.client("s3", region)

    def bucket(self, suffix: str = "images", region: str = "us-east-1") -> str:
        """Create a bucket with a globally unique name (S3 names are shared across accounts)."""
        name = f"amiemu-{self.id}-{suffix}"
        if region == "us-east-1":
            self.s3(region).create_bucket(Bucket=name)
        else:
            self.s3(region).create_bucket(
                Bucket=name, CreateBucketConfiguration={"LocationConstraint": region}
            )
        return name

    def control(self, name: str, payload: dict[str, Any] | None = None, method: str = "POST") -> tuple[int, dict[str, Any]]:
        return control_call(self.endpoint, name, payload, method)

    def configure(self, **settings: float) -> dict[str, Any]:
        status, body = self.control("config", {"account_id": self.id, **settings})
        assert status == 200, body
        return body


def control_call(
    endpoint: str, name: str, payload: dict[str, Any] | None = None, method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    """Plain-HTTP call of a control endpoint: (HTTP status, JSON body)."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{endpoint}/ami-pipeline-emulator/{name}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback only)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def account(emulator: str) -> Account:
    return Account(emulator, _new_account_id())


@pytest.fixture
def other_account(emulator: str) -> Account:
    return Account(emulator, _new_account_id())
