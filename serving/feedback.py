"""Prediction ids that carry what delayed feedback needs, and the checks feedback passes.

Every answer's ``prediction_id`` is a signed token holding the predicted class, the calibrated
confidence, the served model and the time, so ``POST /feedback`` can count a true label against
its prediction with no database shared by workers or replicas: any process holding the same key
can verify it.

Layout, 33 bytes, URL-safe base64 without padding (44 characters)::

    version  u8    1
    model    4 B   the first 4 bytes of SHA-256(model_version): other-model tokens are refused
    issued   u32   Unix seconds
    class    u16   predicted class index
    conf     u16   round(confidence * 65535): 1.5e-5 resolution, finer than any bin
    nonce    8 B   random: two predictions of one image in one second differ
    tag      12 B  HMAC-SHA256(key, the 21 bytes above), truncated (96 bits, as RFC 2104 allows)

What the design guarantees: a token is accepted only if this service's key signed it for this
model, within ``max_age_s`` of its issue; changing any byte fails the tag. A token counts at most
once per process within ``replay_window_s`` (the process remembers the nonces it accepted, up to
``max_remembered``). What it does not: a duplicate sent to another worker or replica, or after
the replay window, counts again (catching those would need state shared between processes); and
whoever holds a token can send a label for it, right or wrong (the token proves the prediction,
not the label).

References:
    Krawczyk, Bellare, Canetti 1997, RFC 2104 "HMAC" (truncated tags, Sec. 5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

VERSION = 1
MIN_KEY_BYTES = 16
_BODY = struct.Struct(">B4sIHH8s")  # version, model, issued, class, conf, nonce
TAG_BYTES = 12
TOKEN_BYTES = _BODY.size + TAG_BYTES
CONFIDENCE_STEPS = 65535
# Refusal reasons, each a label value of the refusal counter (pre-registered at zero).
REASONS = (
    "malformed",
    "forged",
    "other_model",
    "expired",
    "issued_in_future",
    "replayed",
    "bad_label",
)
# A token issued this far ahead of this machine's clock is still taken: replicas' clocks differ.
CLOCK_SKEW_S = 60


class FeedbackError(ValueError):
    """A feedback item refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Prediction:
    """What a verified token says was predicted."""

    predicted: int
    confidence: float
    issued: int
    nonce: bytes


def model_fingerprint(model_version: str) -> bytes:
    """The 4 bytes of a token that name the model it was issued by."""
    return hashlib.sha256(model_version.encode()).digest()[:4]


class TokenSigner:
    """Issues and verifies prediction ids for one model with one key.

    Args:
        key: The HMAC key; every worker and replica that should accept each other's tokens
            needs the same one.
        model_version: The served model's version (the card's).
        max_age_s: Oldest token accepted, in seconds.
        clock: Seconds since the epoch (injectable for tests).
        nonce: Source of the 8 random nonce bytes (injectable for tests).
    """

    def __init__(
        self,
        key: bytes,
        model_version: str,
        max_age_s: float,
        *,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], bytes] = lambda: os.urandom(8),
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(
                f"the feedback key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}"
            )
        self._key = key
        self._model = model_fingerprint(model_version)
        self.max_age_s = max_age_s
        self._clock = clock
        self._nonce = nonce

    def issue(self, predicted: int, confidence: float) -> str:
        """The prediction id of one prediction."""
        steps = round(min(max(confidence, 0.0), 1.0) * CONFIDENCE_STEPS)
        body = _BODY.pack(VERSION, self._model, int(self._clock()), predicted, steps, self._nonce())
        return _b64(body + self._tag(body))

    def issue_many(self, predicted: Sequence[int], confidence: Sequence[float]) -> list[str]:
        """Prediction ids for a batch, in order."""
        return [self.issue(int(p), float(c)) for p, c in zip(predicted, confidence, strict=True)]

    def verify(self, token: object) -> Prediction:
        """The prediction ``token`` records, if this service issued it and it has not expired.

        Raises:
            FeedbackError: With the reason: ``malformed`` (not a token), ``forged`` (the tag
                does not match: another key, or a changed byte), ``other_model``, ``expired``,
                ``issued_in_future``.
        """
        raw = _unb64(token)
        if raw is None or len(raw) != TOKEN_BYTES or raw[0] != VERSION:
            raise FeedbackError("malformed", "prediction_id is not a prediction id of this service")
        body, tag = raw[: _BODY.size], raw[_BODY.size :]
        if not hmac.compare_digest(tag, self._tag(body)):
            raise FeedbackError("forged", "prediction_id was not issued by this service")
        _, model, issued, predicted, steps, nonce = _BODY.unpack(body)
        if model != self._model:
            raise FeedbackError("other_model", "prediction_id was issued by another model version")
        age = self._clock() - issued
        if age > self.max_age_s:
            raise FeedbackError(
                "expired",
                f"prediction_id is {age:.0f} s old; feedback is taken for {self.max_age_s:.0f} s",
            )
        if age < -CLOCK_SKEW_S:
            raise FeedbackError("issued_in_future", "prediction_id was issued in the future")
        return Prediction(predicted, steps / CONFIDENCE_STEPS, issued, nonce)

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:TAG_BYTES]


class ReplayGuard:
    """The nonces this process accepted in the last ``window_s`` seconds, at most ``capacity``
    (the oldest are forgotten first). Thread-safe: the service's endpoint runs in a pool."""

    def __init__(
        self, window_s: float, capacity: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.capacity = capacity
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def admit_all(self, nonces: Sequence[bytes]) -> list[int]:
        """Remember every nonce, or none: the positions of those already admitted within the
        window (or repeated within ``nonces``) when there are any, else ``[]`` and all are
        remembered."""
        with self._lock:
            now = self._clock()
            while self._seen and next(iter(self._seen.values())) < now - self.window_s:
                self._seen.popitem(last=False)
            first: dict[bytes, int] = {}
            repeated = [
                i
                for i, nonce in enumerate(nonces)
                if nonce in self._seen or first.setdefault(nonce, i) != i
            ]
            if repeated:
                return repeated
            for nonce in nonces:
                if len(self._seen) >= self.capacity:
                    self._seen.popitem(last=False)
                self._seen[nonce] = now
            return []

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True)
class Refused:
    """One refused feedback item: its position in the request and why."""

    index: int
    reason: str
    message: str


@dataclass(frozen=True)
class Verdict:
    """A feedback request's outcome: the counted items' confidences and whether each
    prediction was right, or, when any item is refused, nothing counted and the refusals."""

    confidence: list[float]
    correct: list[bool]
    refused: list[Refused]


def judge(
    items: Sequence[tuple[object, object]],
    signer: TokenSigner,
    guard: ReplayGuard,
    class_names: Sequence[str],
) -> Verdict:
    """Check ``(prediction_id, label)`` pairs; count them all or none.

    A request is taken whole: if any item is refused, none is counted (nor remembered), so a
    client can drop the refused items and send the rest again without counting any twice.
    """
    refused: list[Refused] = []
    checked: list[tuple[Prediction, int]] = []
    for i, (token, label) in enumerate(items):
        try:
            checked.append((signer.verify(token), resolve_label(label, class_names)))
        except FeedbackError as err:
            refused.append(Refused(i, err.reason, str(err)))
    if not refused:
        repeated = guard.admit_all([prediction.nonce for prediction, _ in checked])
        message = "feedback for this prediction_id was already counted"
        refused = [Refused(i, "replayed", message) for i in repeated]
    if refused:
        return Verdict([], [], refused)
    return Verdict(
        [p.confidence for p, _ in checked], [p.predicted == label for p, label in checked], []
    )


def resolve_label(label: object, class_names: Sequence[str]) -> int:
    """A label given as a class index or a class name, as an index.

    Raises:
        FeedbackError: ``bad_label`` for anything else.
    """
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(class_names):
        return label
    if isinstance(label, str) and label in class_names:
        return list(class_names).index(label)
    raise FeedbackError(
        "bad_label",
        f"label must be a class index in 0..{len(class_names) - 1} or a class name, got {label!r}",
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(token: object) -> bytes | None:
    if not isinstance(token, str) or not 0 < len(token) <= 64 or not token.isascii():
        return None
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
