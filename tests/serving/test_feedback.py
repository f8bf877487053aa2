"""Prediction ids and the checks feedback passes: layout, tampering, age, replay, labels."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest

from serving.feedback import (
    CONFIDENCE_STEPS,
    FeedbackError,
    ReplayGuard,
    TokenSigner,
    judge,
    model_fingerprint,
    resolve_label,
)

KEY = b"k" * 32
NOW = 1_800_000_000.0


def signer(
    now: float = NOW, key: bytes = KEY, model: str = "abc123-1", age: float = 3600
) -> TokenSigner:
    return TokenSigner(key, model, age, clock=lambda: now, nonce=lambda: b"\x01" * 8)


def test_a_token_is_the_documented_33_bytes_with_an_hmac_tag() -> None:
    token = signer().issue(7, 0.9)
    assert len(token) == 44 and "=" not in token
    raw = base64.urlsafe_b64decode(token)
    body = struct.pack(
        ">B4sIHH8s", 1, model_fingerprint("abc123-1"), int(NOW), 7, 58982, b"\x01" * 8
    )
    assert round(0.9 * 65535) == 58982 and raw[:21] == body  # 0.9 * 65535 = 58981.5
    assert raw[21:] == hmac.new(KEY, body, hashlib.sha256).digest()[:12]
    got = signer().verify(token)
    assert (got.predicted, got.issued, got.nonce) == (7, int(NOW), b"\x01" * 8)
    assert got.confidence == pytest.approx(0.9, abs=1 / CONFIDENCE_STEPS)


def test_every_changed_byte_fails_the_tag() -> None:
    raw = bytearray(base64.urlsafe_b64decode(signer().issue(3, 0.5)))
    for i in range(1, len(raw)):  # byte 0 is the version: changing it is "malformed"
        changed = bytearray(raw)
        changed[i] ^= 0x20
        token = base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()
        with pytest.raises(FeedbackError) as err:
            signer().verify(token)
        assert err.value.reason == "forged", i


@pytest.mark.parametrize(
    "token",
    ["", "not a token", "a" * 44, "é" * 44, "x" * 200, None, 12, ["list"], "AQ"],
)
def test_what_is_not_a_token_is_malformed(token: object) -> None:
    with pytest.raises(FeedbackError) as err:
        signer().verify(token)
    assert err.value.reason in ("malformed", "forged")
    if not isinstance(token, str) or len(token) != 44:
        assert err.value.reason == "malformed"


def test_other_key_other_model_expired_and_future_tokens_are_refused_by_reason() -> None:
    token = signer().issue(1, 0.7)
    cases = {
        "forged": signer(key=b"q" * 32),
        "other_model": signer(model="def456-2"),
        "expired": signer(now=NOW + 3601),
        "issued_in_future": signer(now=NOW - 61),
    }
    for reason, other in cases.items():
        with pytest.raises(FeedbackError) as err:
            other.verify(token)
        assert err.value.reason == reason
    assert signer(now=NOW + 3600).verify(token).predicted == 1  # exactly max age: still taken
    assert signer(now=NOW - 60).verify(token).predicted == 1  # 60 s of clock skew allowed


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes, got 5"):
        TokenSigner(b"short", "m", 60)


def test_replays_within_the_window_are_refused_and_forgotten_after_it() -> None:
    now = [0.0]
    guard = ReplayGuard(window_s=10, capacity=3, clock=lambda: now[0])
    assert guard.admit_all([b"a"]) == []
    assert guard.admit_all([b"a"]) == [0]
    assert guard.admit_all([b"b", b"c", b"b"]) == [2]  # repeated within one request
    assert len(guard) == 1  # a refused request remembers nothing
    now[0] = 10.5  # past the window: "a" is forgotten, so it would count again
    assert guard.admit_all([b"a", b"b", b"c", b"d"]) == []
    assert len(guard) == 3  # capacity 3: the oldest, "a", is dropped
    assert guard.admit_all([b"a"]) == []
    assert guard.admit_all([b"x", b"d"]) == [1]


def test_a_request_counts_whole_or_not_at_all() -> None:
    names = ["cat", "dog", "eel"]
    tokens = [
        TokenSigner(KEY, "m", 3600, clock=lambda: NOW).issue(p, c)
        for p, c in [(0, 0.9), (1, 0.6), (2, 0.8)]
    ]
    guard = ReplayGuard(window_s=3600, capacity=100)
    good = TokenSigner(KEY, "m", 3600, clock=lambda: NOW)
    bad = judge([(tokens[0], "cat"), ("forged!", 1), (tokens[2], 7)], good, guard, names)
    assert [(r.index, r.reason) for r in bad.refused] == [(1, "malformed"), (2, "bad_label")]
    assert bad.confidence == [] and len(guard) == 0
    ok = judge([(tokens[0], "cat"), (tokens[1], 0), (tokens[2], "eel")], good, guard, names)
    assert ok.refused == [] and ok.correct == [True, False, True]
    assert ok.confidence == pytest.approx([0.9, 0.6, 0.8], abs=1e-4)
    again = judge([(tokens[1], 1)], good, guard, names)
    assert [(r.index, r.reason) for r in again.refused] == [(0, "replayed")]


def test_labels_by_index_or_name() -> None:
    names = ["cat", "dog", "ship"]
    assert resolve_label(2, names) == 2 and resolve_label("dog", names) == 1
    for bad in (3, -1, True, 1.0, "Dog", None, [1]):
        with pytest.raises(FeedbackError) as err:
            resolve_label(bad, names)
        assert err.value.reason == "bad_label"
