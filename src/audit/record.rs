//! Audit records: what a caller supplies ([`RecordBody`]), how the log seals it into one signed,
//! chained line, and the hash and signature preimages (docs/audit-format.md defines them exactly).
//!
//! Pure logic, no I/O: sealing is a function of the body, the position in the chain and the key.

use super::canonical::{self, CanonicalError};
use base64::Engine as _;
use ed25519_dalek::hazmat::ExpandedSecretKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Version of the record format (`v`).
pub const FORMAT_VERSION: u64 = 1;
/// Prefixed to the hash preimage.
pub const HASH_DOMAIN: &[u8] = b"zt-aas/audit/v1/hash\0";
/// Prefixed to the signature preimage.
pub const SIG_DOMAIN: &[u8] = b"zt-aas/audit/v1/sig\0";
/// `prev` of the first record of a file.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Fields every record carries; a caller's `extra` may not use these names.
pub const FIXED_FIELDS: &[&str] = &[
    "v", "seq", "ts", "session", "kind", "actor", "action", "args", "token", "decision", "reason",
    "prev", "hash", "key", "sig", "pubkey",
];

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Opens a session: command, policy hash, profile, layers, degraded flag, version.
    SessionStart,
    /// The mediator's decision on one request.
    Decision,
    /// The outcome of an allowed action.
    Result,
    /// A token revoked (or found revoked) during the session.
    Revocation,
    /// Seals a session: its exit status and number of records.
    SessionEnd,
    /// Marks a torn line left by a crash and continues the chain past it.
    Recovery,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::SessionStart,
        Kind::Decision,
        Kind::Result,
        Kind::Revocation,
        Kind::SessionEnd,
        Kind::Recovery,
    ];

    /// The name in the record's `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SessionStart => "session.start",
            Kind::Decision => "decision",
            Kind::Result => "result",
            Kind::Revocation => "revocation",
            Kind::SessionEnd => "session.end",
            Kind::Recovery => "recovery",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Kind::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown kind `{s}`")))
    }
}

/// What a caller supplies; the log adds `v`, `seq`, `ts`, `prev`, `hash`, `key` and `sig`.
/// Absent optionals are written as `null` (every fixed field is always present).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordBody {
    pub session: String,
    pub kind: Kind,
    pub actor: String,
    pub action: Option<String>,
    /// An object, or null.
    pub args: Value,
    /// Token id.
    pub token: Option<String>,
    /// "allow" | "deny" | "error".
    pub decision: Option<String>,
    pub reason: Option<String>,
    /// More top-level fields (command, policy_sha256, exit, records, check, rule, tokens, ...).
    /// Names in [`FIXED_FIELDS`] are refused.
    pub extra: Map<String, Value>,
}

impl RecordBody {
    /// A body with only the required fields; set the others as needed.
    pub fn new(session: impl Into<String>, kind: Kind, actor: impl Into<String>) -> Self {
        RecordBody {
            session: session.into(),
            kind,
            actor: actor.into(),
            action: None,
            args: Value::Null,
            token: None,
            decision: None,
            reason: None,
            extra: Map::new(),
        }
    }
}

/// Why a body cannot be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("extra field `{0}` collides with a fixed record field")]
    ReservedField(String),
    #[error("`args` must be an object or null")]
    ArgsNotObject,
    #[error("decision `{0}` is not one of allow, deny, error")]
    BadDecision(String),
    #[error("record has no canonical encoding: {0}")]
    Canonical(#[from] CanonicalError),
}

/// The position in the chain a record is sealed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPoint {
    /// The seq the next record takes.
    pub seq: u64,
    /// Hex hash of the previous record ([`GENESIS`] for the first).
    pub prev: String,
}

impl ChainPoint {
    pub fn genesis() -> Self {
        ChainPoint {
            seq: 0,
            prev: GENESIS.to_string(),
        }
    }
}

/// A sealed record: the line to write (with its `\n`) and its hex hash.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub line: Vec<u8>,
    pub hash: String,
}

/// Key id: the first 16 hex characters of SHA-256 of the 32-byte public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// hash = SHA-256(HASH_DOMAIN || prev as 32 raw bytes || canonical(record without hash and sig)).
pub fn record_hash(prev: &[u8; 32], canonical_unsigned: &[u8]) -> [u8; 32] {
    record_hash_of_parts(prev, &[canonical_unsigned])
}

/// [`record_hash`] of the canonical encoding given in pieces (joined, they are the encoding).
pub fn record_hash_of_parts(prev: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(prev);
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

/// The signed message: SIG_DOMAIN || hash as 32 raw bytes.
pub fn signature_message(hash: &[u8; 32]) -> [u8; 52] {
    let mut m = [0u8; 52];
    m[..SIG_DOMAIN.len()].copy_from_slice(SIG_DOMAIN);
    m[SIG_DOMAIN.len()..].copy_from_slice(hash);
    m
}

/// Decodes a 64-char lowercase hex hash.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    // Lowercase only: the canonical spelling (a verifier reads two of these per record).
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let bytes: &[u8; 64] = s.as_bytes().try_into().ok()?;
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// A signing key ready to seal records: the expanded secret (RFC 8032 §5.1.6 step 1, done once rather
/// than per signature), the public key, and what records name it by.
pub struct SealingKey {
    expanded: ExpandedSecretKey,
    verifying: VerifyingKey,
    key_id: String,
    pubkey: String,
}

impl From<&SigningKey> for SealingKey {
    fn from(key: &SigningKey) -> SealingKey {
        let verifying = key.verifying_key();
        SealingKey {
            expanded: ExpandedSecretKey::from(key.as_bytes()),
            key_id: key_id(&verifying),
            pubkey: base64::engine::general_purpose::STANDARD.encode(verifying.as_bytes()),
            verifying,
        }
    }
}

impl SealingKey {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Pure Ed25519 (RFC 8032): the same signature as `SigningKey::sign` (tested).
    fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        ed25519_dalek::hazmat::raw_sign::<sha2::Sha512>(&self.expanded, message, &self.verifying)
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Seals `body` at `at`: builds the full record, hashes, signs, and returns the canonical line.
/// `pubkey` is added (base64 public key) to `session.start` and `recovery` records so that a verifier
/// without a pinned key can still check signatures (and report that the signer was not pinned).
pub fn seal(
    body: &RecordBody,
    at: &ChainPoint,
    ts: &str,
    key: &SealingKey,
) -> Result<Sealed, RecordError> {
    if let Some(name) = body
        .extra
        .keys()
        .find(|k| FIXED_FIELDS.contains(&k.as_str()))
    {
        return Err(RecordError::ReservedField(name.clone()));
    }
    if !(body.args.is_object() || body.args.is_null()) {
        return Err(RecordError::ArgsNotObject);
    }
    if let Some(d) = &body.decision {
        if !matches!(d.as_str(), "allow" | "deny" | "error") {
            return Err(RecordError::BadDecision(d.clone()));
        }
    }
    // `at.prev` comes from our own tail reading, which only accepts well-formed hashes.
    let prev_raw = parse_hash(&at.prev).unwrap_or([0u8; 32]);
    use canonical::Part;
    fn opt(o: &Option<String>) -> Part<'_> {
        o.as_deref().map_or(Part::Null, Part::Str)
    }
    let mut parts: Vec<(&str, Part)> = Vec::with_capacity(body.extra.len() + 15);
    // In canonical order already (the sort below then has little to do).
    parts.extend([
        ("action", opt(&body.action)),
        ("actor", Part::Str(&body.actor)),
        ("args", Part::Value(&body.args)),
        ("decision", opt(&body.decision)),
        ("key", Part::Str(&key.key_id)),
        ("kind", Part::Str(body.kind.as_str())),
        ("prev", Part::Str(&at.prev)),
        ("reason", opt(&body.reason)),
        ("seq", Part::UInt(at.seq)),
        ("session", Part::Str(&body.session)),
        ("token", opt(&body.token)),
        ("ts", Part::Str(ts)),
        ("v", Part::UInt(FORMAT_VERSION)),
    ]);
    if matches!(body.kind, Kind::SessionStart | Kind::Recovery) {
        parts.push(("pubkey", Part::Str(&key.pubkey)));
    }
    // No extra name is a fixed one (checked above), so names are unique.
    parts.extend(body.extra.iter().map(|(k, v)| (k.as_str(), Part::Value(v))));
    let members = canonical::Members::from_parts(parts)?;
    let hash = record_hash(&prev_raw, &members.object());
    let sig = key.sign(&signature_message(&hash));
    let hash_hex = hex::encode(hash);
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    let mut line = members.object_with(&[("hash", &hash_hex), ("sig", &sig_b64)]);
    line.push(b'\n');
    Ok(Sealed {
        line,
        hash: hash_hex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::SessionStart.as_str(), "session.start");
        assert_eq!(Kind::parse("session.begin"), None);
    }

    #[test]
    fn sealed_line_is_canonical_and_hash_matches_preimage() {
        let mut body = RecordBody::new("s1", Kind::Decision, "bot");
        body.action = Some("x.y".into());
        body.args = json!({"b": 2, "a": "é"});
        body.decision = Some("allow".into());
        let s = seal(
            &body,
            &ChainPoint::genesis(),
            "2024-01-01T00:00:00Z",
            &(&key()).into(),
        )
        .unwrap();
        assert_eq!(s.line.last(), Some(&b'\n'));
        let mut v: Value = serde_json::from_slice(&s.line).unwrap();
        assert_eq!(canonical::encode(&v).unwrap(), s.line[..s.line.len() - 1]);
        let obj = v.as_object_mut().unwrap();
        assert_eq!(obj["hash"], json!(s.hash));
        assert_eq!(obj["token"], Value::Null);
        assert!(!obj.contains_key("pubkey"));
        obj.remove("hash");
        let sig = obj.remove("sig").unwrap();
        let expect = record_hash(&[0; 32], &canonical::encode(&v).unwrap());
        assert_eq!(hex::encode(expect), s.hash);
        // The cached expanded key signs exactly as the plain signing key does.
        use ed25519_dalek::Signer;
        let plain = key().sign(&signature_message(&expect));
        let b64 = base64::engine::general_purpose::STANDARD.encode(plain.to_bytes());
        assert_eq!(sig, json!(b64));
    }

    #[test]
    fn refuses_reserved_extra_floats_and_bad_decisions() {
        let mut body = RecordBody::new("s1", Kind::Decision, "bot");
        body.extra.insert("seq".into(), json!(3));
        assert_eq!(
            seal(&body, &ChainPoint::genesis(), "t", &(&key()).into()).unwrap_err(),
            RecordError::ReservedField("seq".into())
        );
        let mut body = RecordBody::new("s1", Kind::Decision, "bot");
        body.args = json!({"n": 1.5});
        assert!(matches!(
            seal(&body, &ChainPoint::genesis(), "t", &(&key()).into()),
            Err(RecordError::Canonical(_))
        ));
        let mut body = RecordBody::new("s1", Kind::Decision, "bot");
        body.decision = Some("maybe".into());
        assert!(seal(&body, &ChainPoint::genesis(), "t", &(&key()).into()).is_err());
        let mut body = RecordBody::new("s1", Kind::Decision, "bot");
        body.args = json!([1]);
        assert_eq!(
            seal(&body, &ChainPoint::genesis(), "t", &(&key()).into()).unwrap_err(),
            RecordError::ArgsNotObject
        );
    }

    #[test]
    fn key_id_is_16_hex_of_sha256_of_public_key() {
        let vk = key().verifying_key();
        let full = hex::encode(Sha256::digest(vk.as_bytes()));
        assert_eq!(key_id(&vk), full[..16]);
    }
}
