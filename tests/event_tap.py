"""A minimal websocket client (standard library only) that records ComfyUI's JSON events in a thread.

The integration tests use it to see what the browser would receive during a run; the test
environment has no websocket package and needs none for this.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading


class EventTap(threading.Thread):
    def __init__(self, port: int, client_id: str = "event-tap"):
        super().__init__(daemon=True)
        self.events: list[dict] = []
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self._socket.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self._socket.recv(1)
        if b" 101 " not in response.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"no websocket upgrade: {response[:200]!r}")
        self._socket.settimeout(None)

    def _exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._socket.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def run(self) -> None:
        try:
            while True:
                first, second = self._exact(2)
                opcode, length = first & 0x0F, second & 0x7F
                if length == 126:
                    (length,) = struct.unpack(">H", self._exact(2))
                elif length == 127:
                    (length,) = struct.unpack(">Q", self._exact(8))
                payload = self._exact(length)  # a server's frames are never masked
                if opcode == 8:
                    return
                if opcode == 1:
                    self.events.append(json.loads(payload))
        except (OSError, ConnectionError, ValueError):
            return

    def of_type(self, kind: str) -> list[dict]:
        return [event.get("data", {}) for event in list(self.events) if event.get("type") == kind]

    def close(self) -> None:
        try:
            self._socket.close()
        except OSError:
            pass
