#!/usr/bin/env python3
"""The real Lambda runtime path: each function binary under cargo-lambda's Runtime API emulator.

For every function (create-image, tag-lineage, publish, cleanup):

1. `cargo lambda watch --only-lambda-apis` serves the Lambda Runtime API and the Invoke API and
   does **not** compile anything (it only runs `cargo metadata` on a throw-away one-file manifest
   in a temporary directory, so it never touches the workspace or its build lock).
2. A small HTTP proxy sits between the function and that Runtime API and records when the
   process first polls `GET /2018-06-01/runtime/invocation/next`: process start → first poll is
   the function's **init time** (configuration, AWS SDK clients, runtime start-up).
3. The prebuilt binary is started with the environment `template.yaml` gives it (parameter
   defaults, `TOPIC_ARN` = a topic created in the emulator) plus what Lambda itself sets
   (`AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_*`, `AWS_LAMBDA_LOG_FORMAT=JSON`, ...), its AWS
   calls going to the local emulator through `AWS_ENDPOINT_URL`, in a fresh account of its own,
   with the credentials of its own role: the emulator enforces the IAM policies template.yaml
   gives that role.
4. Every `events/<function>.*.json` is sent with `cargo lambda invoke --data-file`, and the answer
   is compared with the expectation in `events/README.md` (its table is the single source): `ok`
   (with optional JSON-pointer checks, `` `/a/0/b` = `value` ``) or `error <errorType>`.

A function whose binary answers every event with `NotImplemented` is a placeholder (a function
not built yet): it is reported loudly as such and its rows are counted as skipped, not failed.

Run through `scripts/runtime-test` (which installs cargo-lambda and the emulator's virtualenv);
this file needs boto3 and PyYAML, which the emulator's virtualenv has.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = {  # crate / binary / events prefix -> logical id in template.yaml
    "create-image": "CreateImageFunction",
    "tag-lineage": "TagLineageFunction",
    "publish": "PublishFunction",
    "cleanup": "CleanupFunction",
}
REGION = "us-east-1"
# Local differences from the deployed environment, printed with the results.
LOCAL_OVERRIDES = {
    "S3_FORCE_PATH_STYLE": "true",  # the emulator serves S3 path-style
    "VISIBILITY_WAIT_SECONDS": "1",  # an image that does not exist is given up on quickly
}


# ---------------------------------------------------------------------------------------------
# expectations: the table in events/README.md
# ---------------------------------------------------------------------------------------------
@dataclass
class Expectation:
    file: str
    ok: bool
    error_type: str | None = None
    checks: list[tuple[str, object]] = field(default_factory=list)
    contains: list[str] = field(default_factory=list)
    text: str = ""


ROW = re.compile(r"^\|\s*`(?P<file>[^`]+\.json)`\s*\|(?P<rest>.*)\|\s*$")
CHECK = re.compile(r"`(/[^`]*)`\s*=\s*`([^`]*)`")
CONTAINS = re.compile(r"contains\s+`([^`]*)`")


def load_expectations(readme: Path) -> dict[str, Expectation]:
    out: dict[str, Expectation] = {}
    for line in readme.read_text().splitlines():
        m = ROW.match(line)
        if not m:
            continue
        expected = m.group("rest").split("|")[-1].strip()
        e = re.match(r"^(ok|error)\b[:\s]*`?([A-Za-z][A-Za-z0-9]*)?`?", expected)
        if not e:
            raise SystemExit(f"events/README.md: cannot read the expectation of {m.group('file')}: {expected!r}")
        exp = Expectation(file=m.group("file"), ok=e.group(1) == "ok", text=expected)
        if not exp.ok:
            exp.error_type = e.group(2)
            if not exp.error_type:
                raise SystemExit(f"events/README.md: {exp.file}: 'error' needs an errorType")
        for pointer, value in CHECK.findall(expected):
            try:
                parsed: object = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            exp.checks.append((pointer, parsed))
        exp.contains = CONTAINS.findall(expected)
        out[exp.file] = exp
    return out


def pointer_get(doc: object, pointer: str) -> object:
    cur = doc
    for raw in pointer.lstrip("/").split("/") if pointer != "/" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, list):
            cur = cur[int(part)]
        elif isinstance(cur, dict):
            cur = cur[part]
        else:
            raise KeyError(pointer)
    return cur


# ---------------------------------------------------------------------------------------------
# template.yaml: each function's environment, parameters at their defaults
# ---------------------------------------------------------------------------------------------
def load_template(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def tag(name):
        def construct(loader, node):
            if isinstance(node, yaml.ScalarNode):
                value = loader.construct_scalar(node)
                if name == "GetAtt":
                    value = value.split(".", 1)
            elif isinstance(node, yaml.SequenceNode):
                value = loader.construct_sequence(node, deep=True)
            else:
                value = loader.construct_mapping(node, deep=True)
            key = "Ref" if name == "Ref" else f"Fn::{name}"
            return {key: value}

        return construct

    for name in ["Ref", "If", "Sub", "GetAtt", "Split", "Equals", "Not", "And", "Or", "FindInMap", "Join", "Select"]:
        Loader.add_constructor(f"!{name}", tag(name))
    return yaml.load(path.read_text(), Loader=Loader)


# `!Ref AWS::NoValue`: CloudFormation removes the property it is the value of (AWS
# CloudFormation User Guide, "Pseudo parameters reference": AWS::NoValue).
NO_VALUE = object()


class TemplateEnv:
    def __init__(self, template: dict, resources: dict[str, str]):
        self.t = template
        self.params = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
        self.resources = resources  # logical id -> value of Ref

    def value(self, v):
        if isinstance(v, (str, int, float)):
            return str(v) if not isinstance(v, bool) else str(v).lower()
        if isinstance(v, dict) and len(v) == 1:
            (k, a), = v.items()
            if k == "Ref":
                if a == "AWS::NoValue":
                    return NO_VALUE
                if a in self.params:
                    return self.params[a]
                if a in self.resources:
                    return self.resources[a]
                raise SystemExit(f"runtime test: template Ref {a!r} has no local value")
            if k == "Fn::If":
                cond, yes, no = a
                return self.value(yes if self.condition(cond) else no)
            if k == "Fn::Equals":
                return self.value(a[0]) == self.value(a[1])
            if k == "Fn::Not":
                return not self.value(a[0])
            if k == "Fn::And":
                return all(self.value(x) for x in a)
            if k == "Fn::Or":
                return any(self.value(x) for x in a)
            if k == "Condition":
                return self.condition(a)
        raise SystemExit(f"runtime test: cannot evaluate {v!r} from template.yaml locally")

    def condition(self, name: str) -> bool:
        return bool(self.value(self.t["Conditions"][name]))

    def function_env(self, logical_id: str) -> dict[str, str]:
        fn = self.t["Resources"][logical_id]["Properties"]
        variables = fn.get("Environment", {}).get("Variables", {})
        values = {k: self.value(v) for k, v in variables.items()}
        return {k: v for k, v in values.items() if v is not NO_VALUE}


# ---------------------------------------------------------------------------------------------
# processes and ports
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise SystemExit(f"runtime test: {what} exited with {proc.returncode}\n{tail}")
        time.sleep(0.1)
    raise SystemExit(f"runtime test: {what} did not listen on port {port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen | None):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# the Runtime API proxy that times the first poll
# ---------------------------------------------------------------------------------------------
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection", "te", "upgrade"}


class PollTimer:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.first_poll: float | None = None
        self.polled = threading.Event()
        timer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _forward(self):
                if self.command == "GET" and self.path.endswith("/runtime/invocation/next") and timer.first_poll is None:
                    timer.first_poll = time.monotonic()
                    timer.polled.set()
                body = self._body()
                conn = http.client.HTTPConnection("127.0.0.1", timer.upstream_port, timeout=None)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError:
                    # The Runtime API went away (the test is tearing down): drop the long poll.
                    self.close_connection = True
                    return
                finally:
                    conn.close()
                try:
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = _forward

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a function killed mid-poll at teardown is not an error of the test

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# the emulator and an account per function
# ---------------------------------------------------------------------------------------------
def start_emulator(log_dir: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    log = log_dir / "emulator.log"
    proc = subprocess.Popen(
        [str(ROOT / "tests/emulator/serve"), "--port", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/ami-pipeline-emulator/health", timeout=2)
            return url, proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"runtime test: the emulator exited\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
    raise SystemExit("runtime test: the emulator did not become healthy")


SAMPLE_BUCKET = "ami-pipeline-uploads-example"  # the uploads bucket the events/ samples name


def state_bucket(account: str) -> str:
    """The template's StateBucket (announcement claims) in a test account: S3 bucket names are
    global, so each account has its own."""
    return f"ami-pipeline-state-{account}"


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback only)
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"runtime test: {url} answered {exc.code}: {exc.read().decode(errors='replace')}")


def fresh_account(endpoint: str, function: str) -> tuple[str, dict[str, str], str]:
    """A new, empty 12-digit account (STS AssumeRole, as the Rust tests do), its topic, and the
    credentials of the function's own role: the emulator is given the IAM policies
    template.yaml grants that role (parameters at their defaults), so the binary runs under
    its real role, as deployed."""
    import boto3

    account = "".join(random.choice("0123456789") for _ in range(12))
    base = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION, endpoint_url=endpoint)
    sts = boto3.client("sts", **base)

    def assume(role: str) -> dict[str, str]:
        creds = sts.assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/{role}", RoleSessionName=f"runtime-test-{function}"
        )["Credentials"]
        return {
            "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"],
        }

    setup = assume("runtime-test")  # no policies in the emulator: the set-up identity
    sns = boto3.client(
        "sns", region_name=REGION, endpoint_url=endpoint, aws_access_key_id=setup["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=setup["AWS_SECRET_ACCESS_KEY"], aws_session_token=setup["AWS_SESSION_TOKEN"],
    )
    topic = sns.create_topic(Name="ami-pipeline")["TopicArn"]
    boto3.client(
        "s3", region_name=REGION, endpoint_url=endpoint, aws_access_key_id=setup["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=setup["AWS_SECRET_ACCESS_KEY"], aws_session_token=setup["AWS_SESSION_TOKEN"],
    ).create_bucket(Bucket=state_bucket(account))
    _post_json(f"{endpoint}/ami-pipeline-emulator/iam/template-roles", {
        "account_id": account,
        "region": REGION,
        "template_path": str(ROOT / "template.yaml"),
        "parameters": {},
        "resources": {
            "UploadsBucket": {"Ref": SAMPLE_BUCKET},
            "Topic": {"Ref": topic},
            "DeadLetterQueue": {"Ref": f"https://sqs.{REGION}.amazonaws.com/{account}/ami-pipeline-dlq",
                                "Arn": f"arn:aws:sqs:{REGION}:{account}:ami-pipeline-dlq"},
            "ImportRole": {"Ref": "vmimport"},
            "StateBucket": {"Ref": state_bucket(account)},
        },
    })
    env = assume(f"{FUNCTIONS[function]}Role")
    return account, env, topic


# ---------------------------------------------------------------------------------------------
# one function under the runtime emulator
# ---------------------------------------------------------------------------------------------
SHIM_MANIFEST = """[package]
name = "runtime-test-shim"
version = "0.0.0"
edition = "2021"
publish = false
autobins = false

[workspace]

[[bin]]
name = "bootstrap"
path = "main.rs"
"""


@dataclass
class Answer:
    ok: bool
    output: object = None
    error_type: str | None = None
    message: str = ""
    seconds: float = 0.0


def invoke(cargo_lambda: str, port: int, event: Path, timeout: float) -> Answer:
    start = time.monotonic()
    p = subprocess.run(
        [cargo_lambda, "lambda", "invoke", "--invoke-address", "127.0.0.1", "--invoke-port", str(port),
         "--data-file", str(event), "--output-format", "json"],
        capture_output=True, text=True, timeout=timeout,
    )
    took = time.monotonic() - start
    if p.returncode == 0:
        try:
            return Answer(True, json.loads(p.stdout), seconds=took)
        except json.JSONDecodeError:
            return Answer(False, error_type="(unparseable output)", message=p.stdout[:500], seconds=took)
    # cargo-lambda prints a function error as "Error: <errorType>" then "× <errorMessage>".
    err = p.stderr.strip()
    m = re.search(r"^Error:\s+([A-Za-z][A-Za-z0-9_.]*)\s*$", err, re.M)
    message = " ".join(
        line.strip(" │×").strip() for line in err.splitlines()
        if line.strip().startswith(("×", "│")) and "Was this behavior unexpected" not in line
    )
    if m:
        return Answer(False, error_type=m.group(1), message=message, seconds=took)
    return Answer(False, error_type="(invoke failed)", message=err[-800:], seconds=took)


def judge(exp: Expectation, ans: Answer) -> list[str]:
    problems = []
    if exp.ok and not ans.ok:
        return [f"expected ok, got error {ans.error_type}: {ans.message[:300]}"]
    if not exp.ok:
        if ans.ok:
            return [f"expected error {exp.error_type}, got ok: {json.dumps(ans.output)[:300]}"]
        if ans.error_type != exp.error_type:
            return [f"expected error {exp.error_type}, got {ans.error_type}: {ans.message[:300]}"]
        flat = "".join(ans.message.split())  # the CLI wraps long messages at any character
        for text in exp.contains:
            if "".join(text.split()) not in flat:
                problems.append(f"error message lacks {text!r}: {ans.message[:300]}")
        return problems
    for pointer, want in exp.checks:
        try:
            got = pointer_get(ans.output, pointer)
        except (KeyError, IndexError, ValueError):
            problems.append(f"{pointer} missing in {json.dumps(ans.output)[:300]}")
            continue
        if got != want:
            problems.append(f"{pointer} = {json.dumps(got)}, expected {json.dumps(want)}")
    return problems


@dataclass
class FunctionResult:
    name: str
    init_ms: float | None = None
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    placeholder: bool = False
    fatal: str | None = None


def run_function(name, binary, events, exps, env_base, args, work, log_dir) -> FunctionResult:
    res = FunctionResult(name)
    print(f"\n== {name}  ({binary})")
    if not binary.is_file():
        res.fatal = f"no binary at {binary} (build it first: cargo build --bins)"
        res.failed = len(events)
        print(f"   FAIL {res.fatal}")
        return res
    shim = work / f"shim-{name}"
    shim.mkdir()
    (shim / "Cargo.toml").write_text(SHIM_MANIFEST)
    (shim / "main.rs").write_text("fn main() {}\n")
    wport = free_port()
    watch_log = log_dir / f"{name}.watch.log"
    fn_log = log_dir / f"{name}.function.log"
    watch = fn = timer = None
    try:
        watch = subprocess.Popen(
            [args.cargo_lambda, "lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1",
             "--invoke-port", str(wport), "--timeout", str(int(args.invoke_timeout))],
            cwd=shim, stdout=watch_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "CARGO_TARGET_DIR": str(shim / "target")},
        )
        wait_port(wport, watch, 60, "cargo lambda watch", watch_log)
        timer = PollTimer(wport)
        account, creds, topic = fresh_account(args.endpoint, name)
        template_env = env_base.function_env_for(name, topic, account)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            **template_env,
            **{k: v for k, v in LOCAL_OVERRIDES.items() if k in template_env},
            **creds,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": args.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{timer.port}/.rt",
            "AWS_LAMBDA_FUNCTION_NAME": "_",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(env_base.params.get("FunctionMemorySize", "512")),
            "AWS_LAMBDA_LOG_FORMAT": "JSON",
            "AWS_LAMBDA_LOG_LEVEL": "INFO",
        }
        print(f"   account {account}, topic {topic}")
        print(f"   environment from template.yaml: {', '.join(sorted(template_env))}")
        t0 = time.monotonic()
        fn = subprocess.Popen([str(binary)], env=env, stdout=fn_log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
        while not timer.polled.wait(0.05):
            if fn.poll() is not None:
                res.fatal = f"the process exited with {fn.returncode} before polling for an event: " + fn_log.read_text()[-1500:]
                break
            if time.monotonic() - t0 > 60:
                res.fatal = "no poll of /runtime/invocation/next within 60 s"
                break
        if res.fatal:
            res.failed = len(events)
            print(f"   FAIL init: {res.fatal}")
            return res
        res.init_ms = (timer.first_poll - t0) * 1000
        print(f"   init: {res.init_ms:.0f} ms (process start -> first GET /runtime/invocation/next)")
        answers = []
        for ev in events:
            ans = invoke(args.cargo_lambda, wport, ev, args.invoke_timeout + 15)
            answers.append((ev, ans))
            if fn.poll() is not None:
                print(f"   the function process died (exit {fn.returncode}) during {ev.name}")
                break
        if answers and all((not a.ok) and a.error_type == "NotImplemented" for _, a in answers) and len(answers) == len(events):
            res.placeholder = True
            res.skipped = len(events)
            print(f"   PLACEHOLDER: {name} answered every one of its {len(events)} events with errorType "
                  f"NotImplemented ({answers[0][1].message[:120]}); its expectations are not checked yet")
            return res
        for ev, ans in answers:
            exp = exps[ev.name]
            problems = judge(exp, ans)
            if problems:
                res.failed += 1
                print(f"   FAIL {ev.name} ({ans.seconds:.1f} s): {'; '.join(problems)}")
            else:
                res.passed += 1
                shown = f"error {ans.error_type}" if not ans.ok else "ok " + json.dumps(ans.output)[:110]
                print(f"   pass {ev.name} ({ans.seconds:.1f} s): {shown}")
            if args.verbose:
                print("        " + (json.dumps(ans.output) if ans.ok else f"{ans.error_type}: {ans.message}")[:2000])
        missing = len(events) - len(answers)
        if missing:
            res.failed += missing
        if fn.poll() is not None:
            res.fatal = f"the function process exited with {fn.returncode}"
            res.failed += 1
        return res
    finally:
        stop(fn)
        if timer:
            timer.close()
        stop(watch)


class EnvSource:
    def __init__(self, template: dict):
        self.template = template
        self.params = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}

    def function_env_for(self, name: str, topic: str, account: str) -> dict[str, str]:
        resources = {"Topic": topic, "ImportRole": self.params.get("ImportRoleName", "vmimport"),
                     "StateBucket": state_bucket(account)}
        return TemplateEnv(self.template, resources).function_env(FUNCTIONS[name])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary-dir", default=os.environ.get(
        "RUNTIME_TEST_BINARY_DIR",
        os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ami-pipeline", "target"), "debug")),
        help="directory holding the function binaries (default: $CARGO_TARGET_DIR/debug)")
    ap.add_argument("--binary", action="append", default=[], metavar="NAME=PATH",
                    help="path of one function's binary (overrides --binary-dir for it)")
    ap.add_argument("--functions", default=",".join(FUNCTIONS), help="comma-separated subset")
    ap.add_argument("--cargo-lambda", default=shutil.which("cargo-lambda") or "cargo-lambda")
    ap.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"),
                    help="a running emulator (default: start tests/emulator/serve)")
    ap.add_argument("--invoke-timeout", type=float, default=120)
    ap.add_argument("--verbose", "-v", action="store_true", help="print every answer in full")
    args = ap.parse_args()

    if not shutil.which("cargo"):
        print("runtime test: error: cargo must be on PATH (cargo lambda watch runs `cargo metadata`)", file=sys.stderr)
        return 2
    exps = load_expectations(ROOT / "events/README.md")
    files = sorted((ROOT / "events").glob("*.json"))
    problems = []
    for f in files:
        prefix = f.name.split(".", 1)[0]
        if prefix not in FUNCTIONS:
            problems.append(f"events/{f.name}: unknown function prefix {prefix!r}")
        if f.name not in exps:
            problems.append(f"events/{f.name}: no row in events/README.md")
    for name in exps:
        if not (ROOT / "events" / name).is_file():
            problems.append(f"events/README.md lists {name}, which does not exist")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1

    paths = {n: Path(args.binary_dir) / n for n in FUNCTIONS}
    for spec in args.binary:
        n, _, p = spec.partition("=")
        if n not in FUNCTIONS:
            print(f"--binary {spec}: unknown function", file=sys.stderr)
            return 2
        paths[n] = Path(p)
    wanted = [n for n in args.functions.split(",") if n]

    log_dir = Path(tempfile.mkdtemp(prefix="ami-runtime-test-"))
    work = log_dir / "work"
    work.mkdir()
    emulator = None
    if not args.endpoint:
        args.endpoint, emulator = start_emulator(log_dir)
    print(f"runtime test: cargo-lambda {subprocess.run([args.cargo_lambda, 'lambda', '--version'], capture_output=True, text=True).stdout.strip()}, "
          f"emulator {args.endpoint}, logs in {log_dir}")
    print(f"local differences from template.yaml: {', '.join(f'{k}={v}' for k, v in LOCAL_OVERRIDES.items())}")
    env_source = EnvSource(load_template(ROOT / "template.yaml"))
    results = []
    try:
        for name in wanted:
            events = [f for f in files if f.name.startswith(name + ".")]
            results.append(run_function(name, paths[name], events, exps, env_source, args, work, log_dir))
    finally:
        stop(emulator)

    print("\n== init times (process start -> first poll of /runtime/invocation/next)")
    for r in results:
        size = paths[r.name].stat().st_size / 1e6 if paths[r.name].is_file() else 0
        init = f"{r.init_ms:.0f} ms" if r.init_ms is not None else "-"
        note = " (placeholder: NotImplemented)" if r.placeholder else (f" ({r.fatal})" if r.fatal else "")
        print(f"   {r.name:13} {init:>8}   binary {size:6.1f} MB{note}")
    passed = sum(r.passed for r in results)
    failed = sum(r.failed for r in results)
    skipped = sum(r.skipped for r in results)
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
