#!/usr/bin/env python3
"""hello_app in Python: a FoldClient app written from docs/protocol.md alone.

Connects to the app's socket, sends a `ping` and a `list_schemas` (pipelined: both are
written before either answer is read; answers are matched by request_id), prints the
results, exits 0. Any failure prints what went wrong and exits 1. Each request is signed,
unless the credentials file says `"auth": "session"`: then the client opens a session
(section 6.8: the daemon's challenge, one signed hello) and sends the requests unsigned.

Needs Python 3.8+ and the `cryptography` package (Ed25519), nothing else.

    python3 client.py               # as a launched app, or with FOLD_CLIENT_* set by hand
    python3 client.py --self-test   # check the signer against the spec's vectors (section 10)
"""

import json
import os
import secrets
import socket
import struct
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAX_FRAME = 4 * 1024 * 1024  # section 3: 4 MiB body cap, both directions
TIMEOUT_S = 10.0  # every socket read and write
DOMAIN_TAG = b"foldclient-request\x00"  # section 6.2
SESSION_TAG = b"foldclient-session\x00"  # section 6.8


class ProtocolError(Exception):
    """The daemon refused a request, or the connection failed."""


def lp(data: bytes) -> bytes:
    """Length-prefixed field: u32be(len) then the bytes (section 6.2)."""
    return struct.pack(">I", len(data)) + data


def canonical_bytes(v, app_id, request_id, timestamp, nonce, operation, params_text):
    """The bytes the signature covers (section 6.2). params_text is None when absent."""
    params = b"" if params_text is None else params_text.encode("utf-8")
    return (
        DOMAIN_TAG
        + struct.pack(">I", v)
        + lp(app_id.encode("utf-8"))
        + lp(request_id.encode("utf-8"))
        + struct.pack(">Q", timestamp)
        + lp(nonce.encode("utf-8"))
        + lp(operation.encode("utf-8"))
        + lp(params)
    )


def session_bytes(app_id, server_nonce, client_nonce, timestamp):
    """The bytes a hello's signature covers (section 6.8)."""
    return (
        SESSION_TAG
        + struct.pack(">I", 2)
        + lp(app_id.encode("utf-8"))
        + lp(server_nonce.encode("utf-8"))
        + lp(client_nonce.encode("utf-8"))
        + struct.pack(">Q", timestamp)
    )


def sign(key, canonical: bytes) -> str:
    """Pure Ed25519 (RFC 8032) over the canonical bytes, as 128 lowercase hex digits."""
    return key.sign(canonical).hex()


def self_test():
    """Section 10.1: both known-answer vectors must reproduce exactly."""
    seed = bytes(range(32))
    key = Ed25519PrivateKey.from_private_bytes(seed)
    vectors = [
        ("req-1", 1700000000000, "00112233445566778899aabbccddeeff", "query",
         '{"schema":"post","limit":2}',
         "dc63ecc970ddd1ebd73a46eec5b571ad97f10c1457e6016b7a79e50cdf4ef1d7"
         "a40b349d565d710eb87af5f82a4d9b12e782ce426ef516315850e28ed78c550b"),
        ("req-2", 1700000000001, "ffeeddccbbaa99887766554433221100", "ping", None,
         "9281ac0d3ab2f8fb23e67b775f02afe91538d339d76fe893eeac624db25c73ae"
         "0b47d9ffa9ddf81110a3f7b98a238c9823fab859f9b03aaabd5f299f23aa7100"),
    ]
    for rid, ts, nonce, op, params, expected in vectors:
        got = sign(key, canonical_bytes(1, "app_7f3a", rid, ts, nonce, op, params))
        if got != expected:
            raise ProtocolError(f"vector {rid}: signature {got} != {expected}")
    # Section 10.4: the session vector.
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    got = sign(key, session_bytes(
        "app_0123456789ab",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "00112233445566778899aabbccddeeff", 1700000000000))
    expected = ("446d7b761ed4eda2f0ebde48a501815b57517d4c42efbe93c0abbea0b858fb80"
                "29ff8556237ece4cf2818779102a6b357e834e54c7262e7193baa139fa418300")
    if got != expected:
        raise ProtocolError(f"session vector: signature {got} != {expected}")
    print("self-test: both signature vectors and the session vector match")


class Identity:
    """Who the app is, from the environment and credentials file (sections 2.2, 2.3)."""

    def __init__(self):
        env = os.environ
        self.app_id = env.get("FOLD_CLIENT_APP_ID") or fail("FOLD_CLIENT_APP_ID is not set")
        socket_dir = env.get("FOLD_CLIENT_SOCKET_DIR") or fail("FOLD_CLIENT_SOCKET_DIR is not set")
        self.socket_path = os.path.join(socket_dir, self.app_id + ".sock")
        self.v = 1
        self.session = False  # the credentials file says whether the app may open sessions
        self.key = None  # None: unsigned requests (dev-mode token-only apps, section 6.7)
        creds_path = env.get("FOLD_CLIENT_CREDENTIALS")
        if creds_path:
            if os.path.getsize(creds_path) > 65536:
                fail(f"credentials file {creds_path} is over 64 KiB")
            with open(creds_path, "r", encoding="utf-8") as f:
                creds = json.load(f)
            for k in ("v", "app_id", "token", "private_key"):
                if k not in creds:
                    fail(f"credentials file {creds_path} has no {k!r}")
            if creds["app_id"] != self.app_id:
                fail(f"credentials file is for {creds['app_id']!r}, "
                     f"FOLD_CLIENT_APP_ID is {self.app_id!r}")
            self.v = creds["v"]
            self.session = creds.get("auth") == "session"
            self.token = creds["token"]
            self.key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(creds["private_key"]))
        else:
            self.token = env.get("FOLD_CLIENT_APP_TOKEN") or fail(
                "neither FOLD_CLIENT_CREDENTIALS nor FOLD_CLIENT_APP_TOKEN is set")


class Connection:
    """One connection to the daemon: framed JSON, many requests in flight (sections 2.4, 3)."""

    def __init__(self, ident: Identity):
        self.ident = ident
        self.counter = 0
        self.answers = {}  # request_id -> response, for answers read while waiting for another
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        try:
            self.sock.connect(ident.socket_path)
        except OSError as e:
            fail(f"cannot connect to {ident.socket_path}: {e}")
        self.in_session = False
        if ident.session:
            self.open_session()

    def open_session(self):
        """Section 6.8: read the challenge, send the signed hello, read its answer."""
        ident = self.ident
        challenge = self._read_response()
        if challenge.get("request_id") != "session-challenge" or not challenge.get("success"):
            raise ProtocolError("the daemon sent no session challenge")
        server_nonce = challenge["result"]["nonce"]
        timestamp = int(time.time() * 1000)
        client_nonce = secrets.token_hex(16)
        params_text = json.dumps({"server_nonce": server_nonce}, separators=(",", ":"))
        envelope = {"v": 2, "request_id": "hello", "app_id": ident.app_id, "token": ident.token,
                    "operation": "hello", "timestamp": timestamp, "nonce": client_nonce,
                    "signature": sign(ident.key, session_bytes(
                        ident.app_id, server_nonce, client_nonce, timestamp))}
        body = json.dumps(envelope, separators=(",", ":"))[:-1] + ',"params":' + params_text + "}"
        data = body.encode("utf-8")
        self.sock.sendall(struct.pack(">I", len(data)) + data)
        self.answers["hello"] = self._read_response()
        self.result("hello")
        self.in_session = True

    def send(self, operation, params=None) -> str:
        """Writes one request; returns its request_id. params: a dict, or None for none."""
        ident = self.ident
        self.counter += 1
        request_id = f"py-{self.counter}"
        params_text = None if params is None else json.dumps(params, separators=(",", ":"))
        envelope = {"v": ident.v, "request_id": request_id, "app_id": ident.app_id,
                    "token": ident.token, "operation": operation}
        if self.in_session:  # section 6.8: the connection stands for token and signature
            envelope = {"v": 2, "request_id": request_id, "operation": operation}
        elif ident.key is not None:
            envelope["timestamp"] = int(time.time() * 1000)
            envelope["nonce"] = secrets.token_hex(16)
            envelope["signature"] = sign(ident.key, canonical_bytes(
                ident.v, ident.app_id, request_id, envelope["timestamp"], envelope["nonce"],
                operation, params_text))
        body = json.dumps(envelope, separators=(",", ":"))
        if params_text is not None:  # section 6.4: embed the signed params text verbatim
            body = body[:-1] + ',"params":' + params_text + "}"
        data = body.encode("utf-8")
        if len(data) > MAX_FRAME:
            raise ProtocolError(f"{operation}: request of {len(data)} bytes is over the frame cap")
        self.sock.sendall(struct.pack(">I", len(data)) + data)
        return request_id

    def _read_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ProtocolError("the daemon closed the connection")
            buf += chunk
        return buf

    def _read_response(self):
        (length,) = struct.unpack(">I", self._read_exact(4))
        if length > MAX_FRAME:
            raise ProtocolError(f"response frame of {length} bytes is over the cap")
        return json.loads(self._read_exact(length).decode("utf-8"))

    def result(self, request_id: str):
        """Reads answers until the one for request_id; returns its result or raises."""
        while request_id not in self.answers:
            response = self._read_response()
            rid = response.get("request_id")
            if rid is None:  # section 4.3: an unreadable request, or too_large (closing)
                err = response.get("error") or {}
                raise ProtocolError(f"{err.get('code')}: {err.get('message')}")
            self.answers[rid] = response
        response = self.answers.pop(request_id)
        if response.get("success"):
            return response.get("result")
        err = response.get("error") or {}
        field = f" (field {err['field']})" if err.get("field") else ""
        raise ProtocolError(f"{err.get('code')}: {err.get('message')}{field}")


def fail(message):
    raise ProtocolError(message)


def main() -> int:
    try:
        if sys.argv[1:] == ["--self-test"]:
            self_test()
            return 0
        ident = Identity()
        conn = Connection(ident)
        ping_id = conn.send("ping")
        list_id = conn.send("list_schemas")  # pipelined: sent before the ping is answered
        pong = conn.result(ping_id)
        schemas = conn.result(list_id)["schemas"]
        how = "session" if conn.in_session else "signed"
        print(f"hello from {ident.app_id} (python, {how}): protocol v{pong['version']}")
        print(f"{len(schemas)} schema(s) visible: {json.dumps(schemas)}")
        conn.sock.close()
        return 0
    except (ProtocolError, OSError, ValueError, KeyError) as e:
        print(f"client.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
