//! Ed25519 key files and key ids.
//!
//! Formats (one line of text, so a key can be pasted into a policy or an issue tracker without tooling):
//! - public key: `ed25519:<base64 of the 32 key bytes>` (standard alphabet, padded), also accepted inline in a
//!   policy's `[issuers] keys`;
//! - secret key: `ed25519-secret:<base64 of the 32-byte seed>`, in a file of mode 0600. A secret key file
//!   readable by group or others is refused, like ssh does.
//!
//! A key id is the first 16 hex digits of SHA-256 over the 32 public key bytes: short enough to read,
//! long enough that two keys of one deployment never collide by accident (it is a label, not a proof: the
//! signature is what is checked).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Prefix of a public key's text form.
pub const PUBLIC_PREFIX: &str = "ed25519:";
/// Prefix of a secret key's text form.
pub const SECRET_PREFIX: &str = "ed25519-secret:";

/// A key the policy trusts to sign tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    /// [`key_id`] of `key`.
    pub kid: String,
    pub key: VerifyingKey,
}

impl Issuer {
    pub fn new(key: VerifyingKey) -> Issuer {
        Issuer {
            kid: key_id(&key),
            key,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Format { path: PathBuf, problem: String },
    #[error(
        "{}: secret key is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{} already exists (use --force to overwrite)", path.display())]
    Exists { path: PathBuf },
}

/// The key id of `key`: the first 16 hex digits of SHA-256 over its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// The text form of a public key: `ed25519:<base64>`.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", STANDARD.encode(key.as_bytes()))
}

/// Parses `ed25519:<base64>` (surrounding whitespace allowed). The error says what is wrong.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let b64 = text
        .trim()
        .strip_prefix(PUBLIC_PREFIX)
        .ok_or_else(|| format!("not a public key (expected `{PUBLIC_PREFIX}<base64>`)"))?;
    let bytes: [u8; 32] = STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("public key is not 32 bytes of base64")?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 point")?;
    if key.is_weak() {
        return Err("weak (small-order) ed25519 key".into());
    }
    Ok(key)
}

fn parse_secret_key(text: &str) -> Result<SigningKey, String> {
    let b64 = text
        .trim()
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("not a secret key (expected `{SECRET_PREFIX}<base64>`)"))?;
    let seed: [u8; 32] = STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("secret key is not 32 bytes of base64")?;
    Ok(SigningKey::from_bytes(&seed))
}

fn read_small(path: &Path) -> Result<(File, String), KeyError> {
    use std::io::Read;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::files::open_for_reading(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.file_type().is_char_device() || meta.file_type().is_block_device() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a key file (a device)",
        )));
    }
    let mut text = String::new();
    // Key files are one short line; refuse to slurp anything large by mistake.
    (&file).take(4096).read_to_string(&mut text).map_err(io)?;
    Ok((file, text))
}

/// Loads a secret key, refusing a file that group or others can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let (file, text) = read_small(path)?;
    // What the file is, first: a public key given by mistake must not be "fixed" with a chmod.
    let key = parse_secret_key(&text).map_err(|problem| KeyError::Format {
        path: path.to_path_buf(),
        problem: if text.trim_start().starts_with("ed25519:") {
            "this is a public key; give the secret key (the PREFIX.key that keygen wrote beside it)"
                .into()
        } else {
            problem
        },
    })?;
    let mode = file
        .metadata()
        .map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    Ok(key)
}

/// Loads a public key file (`ed25519:<base64>`).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let (_, text) = read_small(path)?;
    parse_public_key(&text).map_err(|problem| KeyError::Format {
        path: path.to_path_buf(),
        problem,
    })
}

/// The two files [`write_key_pair`] writes for `prefix`.
pub fn key_pair_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let mut secret = prefix.as_os_str().to_owned();
    secret.push(".key");
    let mut public = prefix.as_os_str().to_owned();
    public.push(".pub");
    (PathBuf::from(secret), PathBuf::from(public))
}

/// Generates a key pair and writes `PREFIX.key` (mode 0600, created exclusively unless `force`) and
/// `PREFIX.pub`. Returns the public key.
pub fn write_key_pair(prefix: &Path, force: bool) -> Result<VerifyingKey, KeyError> {
    let (secret_path, public_path) = key_pair_paths(prefix);
    if !force {
        for path in [&secret_path, &public_path] {
            if path.symlink_metadata().is_ok() {
                return Err(KeyError::Exists { path: path.clone() });
            }
        }
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let secret_text = format!("{SECRET_PREFIX}{}\n", STANDARD.encode(key.to_bytes()));
    write_file(&secret_path, secret_text.as_bytes(), 0o600, force)?;
    let public = key.verifying_key();
    write_file(
        &public_path,
        format!("{}\n", public_key_text(&public)).as_bytes(),
        0o644,
        force,
    )?;
    Ok(public)
}

/// Writes `bytes` to a new file of `mode` (O_EXCL unless `overwrite`; an overwritten file gets `mode` too,
/// before any byte is written), then syncs it.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            io(source)
        }
    })?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pair_round_trip_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("issuer");
        let public = write_key_pair(&prefix, false).unwrap();
        let (sk, pk) = key_pair_paths(&prefix);
        assert_eq!(
            std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_verifying_key(&pk).unwrap(), public);
        assert_eq!(load_signing_key(&sk).unwrap().verifying_key(), public);
        assert_eq!(key_id(&public).len(), 16);
        // No overwrite without force.
        assert!(matches!(
            write_key_pair(&prefix, false),
            Err(KeyError::Exists { .. })
        ));
        let again = write_key_pair(&prefix, true).unwrap();
        assert_ne!(again, public);
        // Group-readable secret keys are refused.
        std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_signing_key(&sk).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn public_key_text_is_strict() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(parse_public_key(&public_key_text(&key)).unwrap(), key);
        for bad in [
            "",
            "ed25519:",
            "ed25519:AAAA",
            "ed25519-secret:AAAA",
            "rsa:AAAA",
            "ed25519:!!",
        ] {
            assert!(parse_public_key(bad).is_err(), "{bad}");
        }
        // The identity point is small-order: refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(parse_public_key(&format!("ed25519:{}", STANDARD.encode(identity))).is_err());
    }
}
