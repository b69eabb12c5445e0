"""Request decoding and response encoding for the TorchServe handler (no model, no algorithm here).

TorchServe's Python worker hands a handler one dict per request of a batch:

* REST, ``Content-Type: application/json``: ``{"body": <parsed JSON dict>}`` (bytes/bytearray when the JSON
  did not parse, which is answered with 400);
* REST multipart/form-data (``curl -F image=@x.jpg -F prompt="a dog"``): one key per form field, file parts as
  ``bytearray``, text fields as ``str`` (or ``bytearray`` when no text content type was sent);
* REST raw body (``curl --data-binary @x.jpg``): ``{"body": bytearray}``; TorchServe 0.12 forwards no query-string
  parameters with it, so it carries no prompts and is answered 400 with a hint (use JSON or multipart);
* gRPC ``Predictions``: the ``input`` map, every value a ``bytearray``; ``prompt``/``prompts`` are UTF-8 text, a
  JSON list of strings accepted.

Prompts are accepted from keys ``prompts`` (list, JSON list text, or newline-separated text), ``prompt`` and any
key starting with ``prompt`` (``prompt1``, ``prompt_2``...), in that order. Repeated multipart fields with the
same name (``-F prompt=a -F prompt=b``) reach the handler as a list thanks to :func:`merge_repeated_fields`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

JSON_CONTENT_TYPE = "application/json"


class RequestError(Exception):
    """A request the handler refuses before it reaches the model; ``status`` is its HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ParsedRequest:
    """One decoded request: raw image bytes, prompts and the per-request options (None = server default)."""

    image: bytes
    prompts: list[str]
    method: str | None = None
    topk: int | None = None
    heatmap: str | None = None


def to_bytes(value: Any) -> bytes:
    """bytes/bytearray/memoryview -> bytes; anything else -> TypeError."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected bytes, got {type(value).__name__}")


def to_text(value: Any, what: str) -> str:
    """A text field: str as is, bytes/bytearray decoded as UTF-8 (400 if not UTF-8)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"'{what}' is not UTF-8 text") from exc
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RequestError(f"'{what}' must be text, got {type(value).__name__}")


def decode_base64_image(value: Any) -> bytes:
    """The JSON ``image`` field: base64 text (a ``data:image/...;base64,`` prefix is accepted)."""
    if not isinstance(value, str):
        raise RequestError("'image' must be a base64 string in a JSON body")
    text = value.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"'image' is not valid base64: {exc}") from exc
    if not data:
        raise RequestError("'image' is empty")
    return data


def _prompt_items(value: Any, key: str) -> list[str]:
    """One prompt field -> prompts. Lists are taken item by item; text holding a JSON list is expanded."""
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            out.extend(_prompt_items(item, key))
        return out
    text = to_text(value, key)
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            if not all(isinstance(p, str) for p in parsed):
                raise RequestError(f"'{key}' must be a list of strings")
            return list(parsed)
    if key == "prompts" and "\n" in text:
        return text.splitlines()
    return [text]


def collect_prompts(fields: dict[str, Any]) -> list[str]:
    """Prompts from ``prompts``, ``prompt`` and other ``prompt*`` keys (in that order). Not validated."""
    keys = [k for k in ("prompts", "prompt") if k in fields]
    keys += sorted(k for k in fields if isinstance(k, str) and k.startswith("prompt") and k not in ("prompts", "prompt"))
    prompts: list[str] = []
    for key in keys:
        prompts.extend(_prompt_items(fields[key], key))
    return prompts


def validate_prompts(prompts: list[str], max_prompts: int, max_chars: int) -> list[str]:
    """Strip prompts; 400 for none, empty ones, too many or too long."""
    cleaned = [p.strip() for p in prompts]
    if not cleaned:
        raise RequestError("no prompt: send 'prompts' (a list) or 'prompt' (text)")
    if any(not p for p in cleaned):
        raise RequestError("empty prompt")
    if len(cleaned) > max_prompts:
        raise RequestError(f"{len(cleaned)} prompts, over the limit of {max_prompts}")
    for p in cleaned:
        if len(p) > max_chars:
            raise RequestError(f"prompt of {len(p)} characters, over the limit of {max_chars}")
    return cleaned


def _optional_int(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise RequestError(f"'{key}' must be an integer")
    if isinstance(value, int):
        return value
    text = to_text(value, key).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise RequestError(f"'{key}' must be an integer, got {text!r}") from exc


def _optional_text(value: Any, key: str) -> str | None:
    if value is None:
        return None
    text = to_text(value, key).strip()
    return text or None


def parse_request(row: Any, max_prompts: int = 16, max_prompt_chars: int = 300) -> ParsedRequest:
    """One element of TorchServe's batch -> ParsedRequest (RequestError with a 4xx status on bad input)."""
    if not isinstance(row, dict):
        raise RequestError("unsupported request")
    fields: dict[str, Any] = dict(row)
    body = fields.pop("body", None)
    if body is None:
        body = fields.pop("data", None)
    image: bytes | None = None
    if isinstance(body, dict):
        # JSON body. Query-string parameters (?method=...) arrive as sibling keys; the body wins.
        fields.update(body)
        if "image" not in body:
            raise RequestError("JSON body without 'image' (base64)")
        image = decode_base64_image(fields.pop("image"))
    elif isinstance(body, (bytes, bytearray, memoryview)):
        raw = bytes(body)
        head = raw.lstrip()[:1]
        if head in (b"{", b"["):
            # JSON that TorchServe could not parse (it forwards the raw bytes) or a JSON list.
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError(f"request body is not valid JSON: {exc}") from exc
            if not isinstance(parsed, dict):
                raise RequestError("the JSON body must be an object")
            return parse_request({**fields, "body": parsed}, max_prompts, max_prompt_chars)
        image = raw  # a raw image upload (curl --data-binary @x.jpg): prompts must come as other fields
        if not collect_prompts(fields):
            raise RequestError(
                "the body is a bare image without prompts: send JSON {\"image\": <base64>, \"prompts\": [...]} "
                "or multipart (-F image=@x.jpg -F prompt=...)"
            )
    elif isinstance(body, str):
        raise RequestError("request body is text, expected JSON with a base64 'image' or an image upload")
    if image is None:
        if "image" not in fields:
            raise RequestError("no 'image' in the request")
        value = fields.pop("image")
        if isinstance(value, (bytes, bytearray, memoryview)):
            image = bytes(value)
        elif isinstance(value, str):
            image = decode_base64_image(value)  # a text form field holding base64
        else:
            raise RequestError("'image' must be a file part / bytes")
    if not image:
        raise RequestError("'image' is empty")
    try:
        prompts = validate_prompts(collect_prompts(fields), max_prompts, max_prompt_chars)
    except RequestError as exc:
        if not fields:
            raise
        raise RequestError(f"{exc} (fields received: {', '.join(sorted(map(str, fields)))})", exc.status) from None
    heatmap = _optional_text(fields.get("heatmap"), "heatmap")
    if heatmap is not None and heatmap not in ("png", "none"):
        raise RequestError(f"'heatmap' must be 'png' or 'none', got {heatmap!r}")
    topk = _optional_int(fields.get("topk"), "topk")
    if topk is not None and topk < 0:
        raise RequestError(f"'topk' must be >= 0, got {topk}")
    return ParsedRequest(
        image=image,
        prompts=prompts,
        method=_optional_text(fields.get("method"), "method"),
        topk=topk,
        heatmap=heatmap,
    )


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """(H, W) float heatmap in [0, 1] -> 8-bit grayscale PNG bytes of size W x H."""
    arr = np.asarray(heatmap, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {arr.shape}")
    u8 = np.clip(np.nan_to_num(arr, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def heatmap_png_b64(heatmap: np.ndarray) -> str:
    return base64.b64encode(heatmap_png(heatmap)).decode("ascii")


def merge_repeated_fields() -> bool:
    """Let repeated form fields (``-F prompt=a -F prompt=b``) reach the handler as a list.

    TorchServe 0.12's worker builds each request's dict with ``dict.update`` per form field, so a repeated field
    keeps only its last value. This wraps ``ts.service.Service.retrieve_data_for_inference`` (a static method the
    worker calls on each batch) to merge same-named parameters into one whose value is the list of values. It is
    transport plumbing only; returns False when the TorchServe internals differ (then the last value wins).
    """
    try:
        from ts.service import Service
    except ImportError:
        return False
    original = Service.__dict__.get("retrieve_data_for_inference")
    if original is None or getattr(original, "_gscorecam_merged", False):
        return original is not None
    inner = original.__func__ if isinstance(original, staticmethod) else original

    def retrieve_data_for_inference(batch):
        if batch:
            for request in batch:
                params = request.get("parameters") if isinstance(request, dict) else None
                if not params:
                    continue
                names = [p.get("name") for p in params]
                if len(set(names)) == len(names):
                    continue
                merged: dict[str, dict] = {}
                values: dict[str, list] = {}
                for p in params:
                    merged.setdefault(p.get("name"), dict(p))
                    values.setdefault(p.get("name"), []).append(p.get("value"))
                for name, p in merged.items():
                    if len(values[name]) > 1:
                        p["value"] = values[name]
                request["parameters"] = list(merged.values())
        return inner(batch)

    retrieve_data_for_inference._gscorecam_merged = True  # type: ignore[attr-defined]
    Service.retrieve_data_for_inference = staticmethod(retrieve_data_for_inference)
    return True
