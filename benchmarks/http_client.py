"""The app's HTTP API without gradio_client: what a script calling /gradio_api/call/... sends.

No heartbeat is ever opened, so the server never sees such a session end (no unload event).
"""
from __future__ import annotations

import json
import os

__all__ = ["RawClient"]


class RawClient:
    """/gradio_api/upload and /gradio_api/call/<api> over plain HTTP; one session hash per client."""

    def __init__(self, url: str, timeout_s: float = 120.0):
        import httpx

        self.url, self.http = url, httpx.Client(timeout=timeout_s)
        self.session_hash = os.urandom(8).hex()

    def upload(self, name: str, data: bytes) -> dict:
        reply = self.http.post(self.url + "gradio_api/upload", files={"files": (name, data)})
        reply.raise_for_status()
        return {"path": reply.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api: str, *data) -> tuple[str, object]:
        """("complete", outputs) or ("error", the message a visitor would see)."""
        body = json.dumps({"data": list(data), "session_hash": self.session_hash})  # NaN / Infinity allowed
        reply = self.http.post(self.url + f"gradio_api/call/{api}", content=body,
                               headers={"Content-Type": "application/json"})
        reply.raise_for_status()
        event_id = reply.json()["event_id"]
        kind, payload = None, None
        with self.http.stream("GET", self.url + f"gradio_api/call/{api}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: ") and kind in ("complete", "error"):
                    payload = json.loads(line[len("data: "):])
                    break
        if kind == "error":
            return kind, (payload or {}).get("error") if isinstance(payload, dict) else payload
        return kind, payload
