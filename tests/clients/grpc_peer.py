"""gRPC peers for keel's client tests (tests/tests/clients.rs), on grpcio without protoc.

`server`: serves the service `keel.test.Echo` with generic handlers and raw-bytes
messages on 127.0.0.1 (a free port), prints `port <n>` once it serves, then serves until
stdin closes. Methods:
  Unary         replies b"echo:" + request; initial metadata x-initial=hello; trailing
                metadata x-trailer=bye, x-seen-client=<the client's x-client> and
                x-seen-deadline-ms=<the deadline left when the call arrived, or none>
  ServerStream  request b"<n>": replies b"item-0" ... b"item-<n-1>"
  ClientStream  replies b"<count>:<all requests joined>"
  Bidi          replies each request upper-cased, as it arrives
  Fail          aborts with NOT_FOUND "no such thing"
  Slow          request b"<ms>": waits that long, then replies b"late"; records whether
                the call was cancelled first (see Cancelled)
  Cancelled     replies b"<number of Slow calls that saw their cancellation>"

`client <port>`: runs every kind of call through 127.0.0.1:<port> (keel) and prints one
JSON object with what it saw; calls that fail are reported, not raised. A call with the
metadata x-keel-deadline is expected to meet a route whose max_stream_duration takes
the grpc-timeout less an offset.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "keel.test.Echo"
CANCELLED = {"count": 0}
LOCK = threading.Lock()


def identity(data):
    return data


def unary(request, context):
    metadata = dict(context.invocation_metadata())
    remaining = context.time_remaining()
    context.send_initial_metadata((("x-initial", "hello"),))
    context.set_trailing_metadata(
        (
            ("x-trailer", "bye"),
            ("x-seen-client", metadata.get("x-client", "")),
            (
                "x-seen-deadline-ms",
                "none" if remaining is None else str(int(remaining * 1000)),
            ),
        )
    )
    return b"echo:" + request


def server_stream(request, context):
    for i in range(int(request)):
        yield b"item-%d" % i


def client_stream(request_iterator, context):
    parts = list(request_iterator)
    return b"%d:%s" % (len(parts), b"".join(parts))


def bidi(request_iterator, context):
    for message in request_iterator:
        yield message.upper()


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def slow(request, context):
    cancelled = threading.Event()
    context.add_callback(cancelled.set)
    if cancelled.wait(int(request) / 1000.0) or not context.is_active():
        with LOCK:
            CANCELLED["count"] += 1
        return b""
    return b"late"


def cancelled(request, context):
    with LOCK:
        return str(CANCELLED["count"]).encode()


def handler(kind, function):
    return kind(function, request_deserializer=identity, response_serializer=identity)


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": handler(grpc.unary_unary_rpc_method_handler, unary),
                    "ServerStream": handler(grpc.unary_stream_rpc_method_handler, server_stream),
                    "ClientStream": handler(grpc.stream_unary_rpc_method_handler, client_stream),
                    "Bidi": handler(grpc.stream_stream_rpc_method_handler, bidi),
                    "Fail": handler(grpc.unary_unary_rpc_method_handler, fail),
                    "Slow": handler(grpc.unary_unary_rpc_method_handler, slow),
                    "Cancelled": handler(grpc.unary_unary_rpc_method_handler, cancelled),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("port %d" % port, flush=True)
    sys.stdin.read()  # until the test closes stdin (or exits)
    server.stop(0)


def method(channel, kind, name):
    return getattr(channel, kind)(
        "/%s/%s" % (SERVICE, name),
        request_serializer=identity,
        response_deserializer=identity,
    )


def error_of(error):
    return {"code": error.code().name, "details": error.details()}


def run_client(port):
    out = {}
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)

        try:
            reply, call = method(channel, "unary_unary", "Unary").with_call(
                b"ping", metadata=(("x-client", "python"),), timeout=10
            )
            out["unary"] = {
                "reply": reply.decode(),
                "code": call.code().name,
                "initial": dict(call.initial_metadata()),
                "trailing": dict(call.trailing_metadata()),
            }
        except grpc.RpcError as e:
            out["unary"] = error_of(e)

        # A 3 MB message each way: HTTP/2 flow control on both of keel's sides.
        big = bytes(range(256)) * (3 * 1024 * 1024 // 256)
        try:
            reply = method(channel, "unary_unary", "Unary")(big, timeout=20)
            out["big_unary_ok"] = reply == b"echo:" + big
        except grpc.RpcError as e:
            out["big_unary_ok"] = error_of(e)

        try:
            replies = list(method(channel, "unary_stream", "ServerStream")(b"5", timeout=10))
            out["server_stream"] = [r.decode() for r in replies]
        except grpc.RpcError as e:
            out["server_stream"] = error_of(e)

        try:
            requests = iter([b"a", b"bb", b"ccc"])
            reply = method(channel, "stream_unary", "ClientStream")(requests, timeout=10)
            out["client_stream"] = reply.decode()
        except grpc.RpcError as e:
            out["client_stream"] = error_of(e)

        # Bidi: each reply is read before the next request is sent, so the stream is
        # really interleaved through the proxy.
        try:
            outbox = []
            ready = threading.Condition()

            def requests():
                for word in ["one", "two", "three"]:
                    yield word.encode()
                    with ready:
                        ready.wait_for(lambda: len(outbox) >= 1 + ["one", "two", "three"].index(word), timeout=10)

            for reply in method(channel, "stream_stream", "Bidi")(requests(), timeout=10):
                with ready:
                    outbox.append(reply.decode())
                    ready.notify_all()
            out["bidi"] = outbox
        except grpc.RpcError as e:
            out["bidi"] = error_of(e)

        try:
            method(channel, "unary_unary", "Fail")(b"", timeout=10)
            out["fail"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["fail"] = error_of(e)

        started = time.monotonic()
        try:
            method(channel, "unary_unary", "Slow")(b"3000", timeout=0.3)
            out["deadline"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["deadline"] = error_of(e)
        out["deadline"]["elapsed_ms"] = int((time.monotonic() - started) * 1000)

        # keel's own deadline: the route takes grpc-timeout less 1.7 s, so keel ends the
        # call (DEADLINE_EXCEEDED with its message) before the client's 2 s deadline.
        started = time.monotonic()
        try:
            method(channel, "unary_unary", "Slow")(
                b"5000", timeout=2.0, metadata=(("x-keel-deadline", "offset"),)
            )
            out["keel_deadline"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["keel_deadline"] = error_of(e)
        out["keel_deadline"]["elapsed_ms"] = int((time.monotonic() - started) * 1000)

        # The upstream call must have been cancelled too (keel reset it).
        seen = "0"
        for _ in range(50):
            seen = method(channel, "unary_unary", "Cancelled")(b"", timeout=10).decode()
            if seen != "0":
                break
            time.sleep(0.05)
        out["upstream_cancelled"] = int(seen)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        serve()
    elif sys.argv[1:2] == ["client"]:
        run_client(int(sys.argv[2]))
    else:
        sys.exit("usage: grpc_peer.py server | client <port>")
