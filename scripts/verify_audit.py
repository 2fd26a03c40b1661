#!/usr/bin/env python3
"""Independent verifier for zt-aas audit logs, written from docs/audit-format.md alone.

Usage: verify_audit.py LOG [--key PUBFILE] [--expect-head HEX]
Exit 0 when the log verifies, 1 at the first broken record (line, seq, problem), 2 on usage errors.
Standard library only; uses the `cryptography` package for ed25519 when it is installed, else a pure
Python RFC 8032 verifier (slow, fine for test-sized logs; set ZT_AUDIT_PURE_ED25519=1 to force it).
"""

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import sys

HASH_DOMAIN = b"zt-aas/audit/v1/hash\x00"
SIG_DOMAIN = b"zt-aas/audit/v1/sig\x00"
GENESIS = "0" * 64
MAX_SAFE = 2**53 - 1
KINDS = {"session.start", "decision", "result", "revocation", "session.end", "recovery"}
TS_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z\Z")
HEX64_RE = re.compile(r"^[0-9a-f]{64}\Z")
HEX16_RE = re.compile(r"^[0-9a-f]{16}\Z")

# --- Ed25519 (RFC 8032 section 5.1.7, verification only) ---------------------------------------------

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_I = pow(2, (_P - 1) // 4, _P)


def _recover_x(y, sign):
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _I % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)
_ZERO = (0, 1, 1, 0)


def _add(p, q):
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f, g * h, f * g, e * h)


def _mul(s, p):
    q = _ZERO
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _equal(p, q):
    return (p[0] * q[2] - q[0] * p[2]) % _P == 0 and (p[1] * q[2] - q[1] * p[2]) % _P == 0


def _decompress(b):
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


def valid_public_key(pk):
    """A decodable point that is not of small order."""
    a = _decompress(pk)
    return a is not None and not _equal(_mul(8, a), _ZERO)


def _verify_pure(pk, msg, sig):
    a = _decompress(pk)
    r = _decompress(sig[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= _L:
        return False
    h = int.from_bytes(hashlib.sha512(sig[:32] + pk + msg).digest(), "little") % _L
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


try:
    if os.environ.get("ZT_AUDIT_PURE_ED25519"):
        raise ImportError("pure Python ed25519 requested")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    def ed25519_verify(pk, msg, sig):
        try:
            Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
            return True
        except (InvalidSignature, ValueError):
            return False

except ImportError:  # pragma: no cover - depends on the host
    ed25519_verify = _verify_pure

# --- Canonical encoding ---------------------------------------------------------------------------------


class NotCanonical(Exception):
    pass


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _enc_string(s):
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _utf16_key(name):
    return name.encode("utf-16-be", "surrogatepass")


def canonical(value):
    """The canonical encoding of `value`, as bytes."""
    return _enc(value).encode("utf-8")  # raises UnicodeEncodeError on lone surrogates


def _enc(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        if abs(v) > MAX_SAFE:
            raise NotCanonical("integer outside the safe range")
        return str(v)
    if isinstance(v, float):
        raise NotCanonical("non-integer number")
    if isinstance(v, str):
        return _enc_string(v)
    if isinstance(v, list):
        return "[" + ",".join(_enc(x) for x in v) + "]"
    if isinstance(v, dict):
        names = sorted(v, key=_utf16_key)
        return "{" + ",".join(_enc_string(k) + ":" + _enc(v[k]) for k in names) + "}"
    raise NotCanonical("unsupported value")


# --- Verification ---------------------------------------------------------------------------------------


class Broken(Exception):
    def __init__(self, line, seq, problem, what):
        super().__init__(what)
        self.line, self.seq, self.problem, self.what = line, seq, problem, what


def key_id(pk):
    return hashlib.sha256(pk).hexdigest()[:16]


def b64(s, n):
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return None
    # Canonical only (padding bits zero): Python ignores unused bits, so "Xy==" and "Xz==" would both
    # pass for the same bytes, and a byte of the unhashed `sig` could change unnoticed.
    if base64.b64encode(raw).decode() != s:
        return None
    return raw if len(raw) == n else None


MAX_DEPTH = 128


def depth(value):
    """Nesting depth of objects and arrays (iterative: a hostile line must not exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _not_json(constant):
    raise ValueError("%s is not JSON" % constant)


def lone_surrogate(value):
    """Whether a string (or name) in `value` holds a lone UTF-16 surrogate (`"\\ud800"`): not JSON text
    (RFC 8259 strings are Unicode), although Python's parser lets it through."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def parse(line_bytes):
    """Returns (record, problem, what); record is None when the line is not a valid record."""
    try:
        text = line_bytes.decode("utf-8")
        # NaN and Infinity are not JSON; an integer too long to be exact is kept as a non-integer (which
        # the canonical encoding refuses), rather than failing Python's digit limit.
        rec = json.loads(text, parse_constant=_not_json,
                         parse_int=lambda s: int(s) if len(s) <= 40 else float("inf"))
        if lone_surrogate(rec):
            raise ValueError("a lone surrogate escape is not JSON text")
    except RecursionError:
        return None, "garbage", "nested more than %d levels" % MAX_DEPTH
    except (UnicodeDecodeError, ValueError) as e:
        return None, "garbage", "not a JSON record (%s)" % e
    if not isinstance(rec, dict):
        return None, "garbage", "not a JSON object"
    if depth(rec) > MAX_DEPTH:
        return None, "garbage", "nested more than %d levels" % MAX_DEPTH
    try:
        if canonical(rec) != line_bytes:
            return None, "not-canonical", "not the canonical encoding of itself"
    except (NotCanonical, UnicodeEncodeError) as e:
        return None, "not-canonical", str(e)
    problem = check_fields(rec)
    if problem:
        return None, "bad-field", problem
    return rec, None, None


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_fields(r):
    for name in ("v", "seq", "ts", "session", "kind", "actor", "action", "args", "token", "decision",
                 "reason", "prev", "hash", "key", "sig"):
        if name not in r:
            return "field `%s` is missing" % name
    if not is_int(r["v"]) or r["v"] != 1:
        return "unsupported version"
    if not is_int(r["seq"]) or r["seq"] < 0:
        return "bad seq"
    if not isinstance(r["ts"], str) or not TS_RE.match(r["ts"]):
        return "bad ts"
    for name in ("session", "actor"):
        if not isinstance(r[name], str):
            return "field `%s` is not a string" % name
    if r["kind"] not in KINDS:
        return "unknown kind"
    for name in ("action", "token", "decision", "reason"):
        if r[name] is not None and not isinstance(r[name], str):
            return "field `%s` is neither a string nor null" % name
    if r["args"] is not None and not isinstance(r["args"], dict):
        return "args is neither an object nor null"
    if r["decision"] not in (None, "allow", "deny", "error"):
        return "bad decision"
    for name in ("prev", "hash"):
        if not isinstance(r[name], str) or not HEX64_RE.match(r[name]):
            return "field `%s` is not 64 hex" % name
    if not isinstance(r["key"], str) or not HEX16_RE.match(r["key"]):
        return "field `key` is not 16 hex"
    if not isinstance(r["sig"], str) or b64(r["sig"], 64) is None:
        return "field `sig` is not base64 of 64 bytes"
    if r["kind"] in ("session.start", "recovery"):
        pk = b64(r["pubkey"], 32) if isinstance(r.get("pubkey"), str) else None
        if pk is None or not valid_public_key(pk) or key_id(pk) != r["key"]:
            return "bad pubkey"
    elif "pubkey" in r:
        return "pubkey not allowed here"
    if r["kind"] == "session.end":
        if not is_int(r.get("exit")) or not is_int(r.get("records")) or r["records"] < 0:
            return "session.end without integer exit/records"
    if r["kind"] == "recovery":
        for name in ("torn_offset", "torn_length"):
            if not is_int(r.get(name)) or r[name] < 0:
                return "bad %s" % name
        if not isinstance(r.get("torn_sha256"), str) or not HEX64_RE.match(r["torn_sha256"]):
            return "bad torn_sha256"
    return None


def record_hash(rec):
    unsigned = {k: v for k, v in rec.items() if k not in ("hash", "sig")}
    preimage = HASH_DOMAIN + bytes.fromhex(rec["prev"]) + canonical(unsigned)
    return hashlib.sha256(preimage).hexdigest()


def verify(data, pinned=None, expect_head=None):
    """Returns a summary dict; raises Broken at the first error."""
    if not data:
        raise Broken(1, None, "empty", "the log is empty")
    pieces = data.split(b"\n")
    lines = []  # (offset, bytes, terminated)
    offset = 0
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if last and piece == b"":
            break
        lines.append((offset, piece, not last))
        offset += len(piece) + 1
    parsed = [parse(b) for (_, b, _) in lines]

    expected_seq = 0
    prev_hash = GENESIS
    hashes = []
    line_of_seq = []
    keys = {}
    sessions = {}  # id -> [start_line, start_seq, count, end_line]
    recovered = []
    recovery_ok_at = None
    pinned_id = key_id(pinned) if pinned is not None else None

    for idx, (off, raw, terminated) in enumerate(lines):
        n = idx + 1
        if idx + 1 < len(parsed) and parsed[idx + 1][0] is not None:
            nxt = parsed[idx + 1][0]
            if (nxt["kind"] == "recovery" and nxt["torn_offset"] == off and nxt["torn_length"] == len(raw)
                    and nxt["torn_sha256"] == hashlib.sha256(raw).hexdigest()):
                recovered.append(n)
                recovery_ok_at = idx + 1
                continue
        rec, problem, what = parsed[idx]
        if not terminated:
            raise Broken(n, rec["seq"] if rec else None, "torn", "the last line has no newline")
        if rec is None:
            raise Broken(n, None, problem, what)
        seq = rec["seq"]
        if seq != expected_seq:
            if seq > expected_seq:
                raise Broken(n, seq, "seq-gap", "seq %d where %d was expected" % (seq, expected_seq))
            if hashes[seq] == rec["hash"]:
                raise Broken(n, seq, "duplicate", "duplicate of line %d" % line_of_seq[seq])
            raise Broken(n, seq, "reordered", "seq goes backwards")
        if rec["prev"] != prev_hash:
            raise Broken(n, seq, "bad-chain-link", "prev is not the previous record's hash")
        if record_hash(rec) != rec["hash"]:
            raise Broken(n, seq, "bad-hash", "hash does not match the contents")
        if pinned is not None:
            if rec["key"] != pinned_id:
                raise Broken(n, seq, "wrong-key", "signed by %s, not %s" % (rec["key"], pinned_id))
            pk = pinned
        else:
            if "pubkey" in rec:
                keys.setdefault(rec["key"], base64.b64decode(rec["pubkey"]))
            pk = keys.get(rec["key"])
            if pk is None:
                raise Broken(n, seq, "unknown-key", "signed by unintroduced key %s" % rec["key"])
        sid, kind = rec["session"], rec["kind"]
        if kind == "recovery":
            if recovery_ok_at != idx:
                raise Broken(n, seq, "session-order", "recovery names no torn line before it")
        elif kind == "session.start":
            if sid in sessions:
                raise Broken(n, seq, "session-order", "session started twice")
            sessions[sid] = [n, seq, 1, None]
        else:
            s = sessions.get(sid)
            if s is None or s[3] is not None:
                raise Broken(n, seq, "session-order", "%s outside its session" % kind)
            s[2] += 1
            if kind == "session.end":
                if rec["records"] != s[2]:
                    raise Broken(n, seq, "record-count", "session.end counts %d, found %d" % (rec["records"], s[2]))
                s[3] = n
        message = SIG_DOMAIN + bytes.fromhex(rec["hash"])
        if not ed25519_verify(pk, message, base64.b64decode(rec["sig"])):
            raise Broken(n, seq, "bad-signature", "the signature does not verify")
        hashes.append(rec["hash"])
        line_of_seq.append(n)
        prev_hash = rec["hash"]
        expected_seq += 1

    if not hashes:
        raise Broken(1, None, "empty", "no records")
    # The anchor first: a session that crashed long ago must not hide a cut at the end of the file.
    if expect_head is not None and prev_hash != expect_head.lower():
        raise Broken(line_of_seq[-1], len(hashes) - 1, "head-mismatch",
                     "the log ends in %s, not %s" % (prev_hash, expect_head))
    unsealed = [(s[0], s[1], sid) for sid, s in sessions.items() if s[3] is None]
    if unsealed:
        line, seq, sid = min(unsealed)
        raise Broken(line, seq, "unsealed", "session %r is not sealed (%d unsealed in all)"
                     % (sid, len(unsealed)))
    return {"records": len(hashes), "sessions": len(sessions), "head": prev_hash,
            "key_ids": sorted(set(keys) | ({pinned_id} if pinned_id else set())), "recovered": recovered}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--key", metavar="PUBFILE")
    ap.add_argument("--expect-head", metavar="HEX")
    args = ap.parse_args(argv)
    try:
        with open(args.log, "rb") as f:
            data = f.read()
        pinned = None
        if args.key:
            with open(args.key, "r", encoding="utf-8") as f:
                text = f.read().strip()
            if not text.startswith("ed25519:") or b64(text[len("ed25519:"):], 32) is None:
                print("verify_audit: %s: not an ed25519 public key file" % args.key, file=sys.stderr)
                return 2
            pinned = b64(text[len("ed25519:"):], 32)
    except OSError as e:
        print("verify_audit: %s" % e, file=sys.stderr)
        return 2
    if args.expect_head is not None and not HEX64_RE.match(args.expect_head.lower()):
        print("verify_audit: --expect-head is not 64 hex digits", file=sys.stderr)
        return 2
    try:
        summary = verify(data, pinned, args.expect_head)
    except Broken as b:
        seq = "" if b.seq is None else " (seq %d)" % b.seq
        print("FAILED at line %d%s: %s: %s" % (b.line, seq, b.problem, b.what))
        return 1
    signer = "pinned key " + key_id(pinned) if pinned else "signer NOT pinned"
    print("ok: %d records, %d sessions, head %s, %s" % (summary["records"], summary["sessions"],
                                                         summary["head"], signer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
