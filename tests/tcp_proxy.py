"""A loopback TCP proxy that a test can stop and restart, to cut an S3 server off mid-transfer.

moto's server keeps its data in memory, so restarting the server process itself would lose every
bucket; stopping this proxy drops every open connection and refuses new ones exactly as a
restarting server does, while the data behind it survives.

``lose_reply`` models the other network fault a retry must survive: the server carries a request
out and its success reply never arrives. The client's connection is reset instead, so boto3
retries a request whose effect is already stored. Given ``then``, the proxy also answers that
retry itself, without passing it on, the way a store that forgot the request's state answers
it (some S3-compatible stores reply NoSuchUpload to a repeated CompleteMultipartUpload).
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int, listen_port: int = 0) -> None:
        self.target_port = target_port
        self.port = listen_port
        self.bytes_up = 0  # client -> server bytes forwarded so far
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._lose: list[tuple[bytes, bytes, bytes | None]] = []  # (method, path fragment, then), one reply each
        self._answer: list[tuple[bytes, bytes, bytes]] = []  # (method, fragment, reply) for the retry
        self.replies_lost: list[str] = []  # request lines whose success reply was dropped
        self.replies_answered: list[str] = []  # request lines the proxy answered itself

    def lose_reply(self, method: str, fragment: str, then: bytes | None = None) -> None:
        """Drop the next 2xx reply to a ``method`` request whose request line holds ``fragment``
        (the server has then done the work), closing the client's connection instead. ``then``:
        a whole HTTP reply that the proxy sends to the next such request (the client's retry)
        instead of passing it on."""
        with self._lock:
            self._lose.append((method.encode() + b" ", fragment.encode(), then))

    def start(self) -> "TcpProxy":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self.port = srv.getsockname()[1]
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listener and reset every open connection."""
        with self._lock:
            if self._server:
                self._server.close()
                self._server = None
            for c in self._conns:
                try:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    c.close()
                except OSError:
                    pass
            self._conns.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            request = {"line": b""}  # the latest request line sent on this connection
            threading.Thread(target=self._pump, args=(client, upstream, True, request), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False, request), daemon=True).start()

    def _drops(self, request: bytes, reply: bytes) -> bool:
        final = reply  # an interim 100 Continue can arrive in one read with the final reply after it
        while final.startswith((b"HTTP/1.1 100", b"HTTP/1.0 100")) and b"\r\n\r\n" in final:
            final = final.split(b"\r\n\r\n", 1)[1]
        if not final.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
            return False  # a 100 Continue alone, or an error: the request is not done, or did nothing
        with self._lock:
            for i, (method, fragment, then) in enumerate(self._lose):
                if request.startswith(method) and fragment in request:
                    del self._lose[i]
                    self.replies_lost.append(request.decode(errors="replace"))
                    if then is not None:
                        self._answer.append((method, fragment, then))
                    return True
        return False

    def _canned(self, request: bytes) -> bytes | None:
        with self._lock:
            for i, (method, fragment, reply) in enumerate(self._answer):
                if request.startswith(method) and fragment in request:
                    del self._answer[i]
                    self.replies_answered.append(request.decode(errors="replace"))
                    return reply
        return None

    @staticmethod
    def _swallow(src: socket.socket, data: bytes) -> None:
        """Read the rest of a request that ``data`` starts (headers, then Content-Length bytes)."""
        while b"\r\n\r\n" not in data:
            data += src.recv(65536) or b"\r\n\r\n"
        head, body = data.split(b"\r\n\r\n", 1)
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (line.partition(b":") for line in head.split(b"\r\n")[1:])}
        if fields.get(b"expect", b"").lower() == b"100-continue" and not body:
            src.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        left = int(fields.get(b"content-length", b"0")) - len(body)
        while left > 0:
            chunk = src.recv(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool, request: dict) -> None:
        try:
            while data := src.recv(65536):
                if up and data[:8].split(b" ")[0] in (b"GET", b"PUT", b"POST", b"HEAD", b"DELETE"):
                    request["line"] = data.split(b"\r\n", 1)[0]
                    if (reply := self._canned(request["line"])) is not None:
                        self._swallow(src, data)
                        src.sendall(reply)  # the server never sees this request
                        continue
                if not up and self._drops(request["line"], data):
                    dst.shutdown(socket.SHUT_RDWR)  # wakes the other pump; a close alone would not
                    return  # the finally closes both ends: the client's read ends with no reply
                dst.sendall(data)
                if up:
                    self.bytes_up += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
