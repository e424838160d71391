"""``python -m ami_emulator --host 127.0.0.1 --port PORT``: moto's server plus the extensions.

Mirrors ``moto.server.main`` (werkzeug ``run_simple`` with moto's ``DomainDispatcherApplication``
and ``MotoRequestHandler``, threaded) with these differences: the extensions are applied first,
the app is wrapped in ``FaultMiddleware`` (per-account fault injection and request counts) and
``ControlMiddleware`` (the ``/ami-pipeline-emulator/`` routes), the EC2/S3/STS/EBS backends
are loaded before the port is bound, so the first request is fast and a successful TCP connect
means the emulator is ready, and connections are persistent as AWS's are
(``keep_alive.KeepAliveRequestHandler``; ``--connection close`` serves as werkzeug does, one
connection per request), and EC2's Query requests reach moto's ``EC2Response`` without the Flask
app around it (``direct_dispatch``; ``--dispatch flask`` serves every request through Flask),
the per-image calls of a cleanup among them without moto's generic request parsing and response
serialization (``fast_lane``; ``--lane off`` serves them through moto's), and the plain requests
SDKs send are parsed without http.server's general header handling
(``KeepAliveRequestHandler.parse_request``; ``--plain-requests off`` parses every request with it).
The server's threads are kept on one CPU (``affinity``; ``--cpu off`` leaves them to the kernel).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

WARM_BACKENDS = ("ec2", "s3", "sts", "ebs")


def _exit(signum: int, frame: Any) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ami_emulator", description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument(
        "--connection",
        choices=("keep-alive", "close"),
        default="keep-alive",
        help="keep-alive: HTTP/1.1 persistent connections (default); close: one per request",
    )
    parser.add_argument(
        "--dispatch",
        choices=("direct", "flask"),
        default="direct",
        help="direct: EC2 Query requests reach moto without Flask (default); flask: every request through moto's Flask apps",
    )
    parser.add_argument(
        "--lane",
        choices=("on", "off"),
        default=os.environ.get("AMI_EMULATOR_LANE", "on"),
        help="on: DescribeImageAttribute, DeregisterImage and DeleteSnapshot set up and answered by ami_emulator.fast_lane (default); off: by moto",
    )
    parser.add_argument(
        "--plain-requests",
        choices=("on", "off"),
        default=os.environ.get("AMI_EMULATOR_PLAIN_REQUESTS", "on"),
        help="on: plain requests on a persistent connection parsed by keep_alive's plain path (default); off: every request by http.server and werkzeug",
    )
    parser.add_argument(
        "--cpu",
        default=os.environ.get("AMI_EMULATOR_CPU", "auto"),
        help="auto: every thread on the CPU the server starts on, with two or more allowed (default); off: threads moved freely by the kernel; N: on CPU N",
    )
    parser.add_argument(
        "--access-log",
        choices=("errors", "all"),
        default=os.environ.get("AMI_EMULATOR_ACCESS_LOG", "errors"),
        help="errors: werkzeug's access log line only for requests not answered 1xx-3xx (default); all: every request",
    )
    args = parser.parse_args(argv)
    from . import affinity

    try:
        cpu, cpu_text = affinity.choose(args.cpu)
    except affinity.AffinityError as exc:
        parser.error(str(exc))

    os.environ.setdefault("MOTO_PORT", str(args.port))
    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

    from werkzeug.serving import run_simple

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    from . import apply_extensions
    from .common import default_config
    from .control import ControlMiddleware
    from .direct_dispatch import DirectDispatch
    from .faults import FaultMiddleware
    from .keep_alive import KeepAliveRequestHandler, errors_only

    default_config()  # fail fast on a malformed AMI_EMULATOR_*_DELAY_SECONDS
    apply_extensions()

    dispatcher = DomainDispatcherApplication(create_backend_app)
    dispatcher.debug = True  # type: ignore[attr-defined]
    for name in WARM_BACKENDS:
        dispatcher.app_instances[name] = create_backend_app(name)  # type: ignore[arg-type]

    signal.signal(signal.SIGINT, _exit)
    signal.signal(signal.SIGTERM, _exit)
    app = DirectDispatch(dispatcher, lane=args.lane == "on") if args.dispatch == "direct" else dispatcher
    handler = KeepAliveRequestHandler if args.connection == "keep-alive" else MotoRequestHandler
    if args.connection == "keep-alive" and args.plain_requests == "off":
        handler = type("GeneralKeepAliveRequestHandler", (KeepAliveRequestHandler,), {"plain_requests": False})
    if args.access_log == "errors":
        handler = errors_only(handler)
    # Last before serving: the threads running now are pinned, and each handler thread inherits
    # the accepting thread's CPUs.
    affinity.pin(cpu)
    print(
        f"ami_emulator: serving on http://{args.host}:{args.port} (connection: {args.connection}, dispatch: {args.dispatch}, lane: {args.lane}, plain requests: {args.plain_requests}, cpu: {cpu_text}, access log: {args.access_log})",
        flush=True,
    )
    run_simple(
        args.host,
        args.port,
        ControlMiddleware(FaultMiddleware(app, dispatcher)),
        threaded=True,
        use_reloader=False,
        request_handler=handler,
    )


if __name__ == "__main__":
    main()
