//! The audit signing key: created on first use (mode 0600, public key beside it), refused when readable
//! by group or others. File formats (shared with capability keys):
//! secret `ed25519-secret:<base64 of the 32-byte seed>\n`, public `ed25519:<base64 of 32 bytes>\n`.
//!
//! Does not protect against: a key file readable by the same user (any process of that user can sign);
//! that is why the sandbox hides it from the agent.

use super::AuditError;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

const SECRET_PREFIX: &str = "ed25519-secret:";
const PUBLIC_PREFIX: &str = "ed25519:";

/// Where the public key of the secret key at `path` lives: `.key` replaced by `.pub`, else `.pub` appended.
pub fn public_key_path(path: &Path) -> PathBuf {
    if path.extension().is_some_and(|e| e == "key") {
        path.with_extension("pub")
    } else {
        let mut s = path.as_os_str().to_owned();
        s.push(".pub");
        PathBuf::from(s)
    }
}

/// Loads the signing key at `path`, or creates it (and its public key) if it does not exist.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, AuditError> {
    match fs::metadata(path) {
        Ok(_) => load_signing_key(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(path),
        Err(e) => Err(AuditError::io(path, e)),
    }
}

/// Loads an existing signing key, refusing one that group or others can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    let meta = fs::metadata(path).map_err(|e| AuditError::io(path, e))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(AuditError::Key(format!(
            "{}: private key is accessible by group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    let text = fs::read_to_string(path).map_err(|e| AuditError::io(path, e))?;
    let seed = decode_32(&text, SECRET_PREFIX).ok_or_else(|| {
        AuditError::Key(format!(
            "{}: not an ed25519-secret key file",
            path.display()
        ))
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads a public key file (`ed25519:<base64>`).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let text = fs::read_to_string(path).map_err(|e| AuditError::io(path, e))?;
    parse_public_key(&text).ok_or_else(|| {
        AuditError::Key(format!(
            "{}: not an ed25519 public key file",
            path.display()
        ))
    })
}

/// Parses `ed25519:<base64 of 32 bytes>` (surrounding whitespace ignored).
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&decode_32(text, PUBLIC_PREFIX)?).ok()
}

/// The text of a public key file.
pub fn format_public_key(key: &VerifyingKey) -> String {
    format!(
        "{PUBLIC_PREFIX}{}\n",
        base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
    )
}

fn decode_32(text: &str, prefix: &str) -> Option<[u8; 32]> {
    let b64 = text.trim().strip_prefix(prefix)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    bytes.try_into().ok()
}

fn create_key(path: &Path) -> Result<SigningKey, AuditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AuditError::io(dir, e))?;
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let secret = format!(
        "{SECRET_PREFIX}{}\n",
        base64::engine::general_purpose::STANDARD.encode(key.to_bytes())
    );
    // Write a private temporary file, then link it into place: the key appears whole or not at all, and
    // two processes creating it at once agree on one key (the loser of the link loads the winner's).
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return load_signing_key(path),
        Err(e) => return Err(AuditError::io(path, e)),
    }
    let pub_path = public_key_path(path);
    fs::write(&pub_path, format_public_key(&key.verifying_key()))
        .map_err(|e| AuditError::io(&pub_path, e))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_0600_and_public_key_beside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.key");
        let k1 = load_or_create_key(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pk = load_public_key(&dir.path().join("sub/audit.pub")).unwrap();
        assert_eq!(pk, k1.verifying_key());
        let k2 = load_or_create_key(&path).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        assert_eq!(public_key_path(Path::new("a/b")), PathBuf::from("a/b.pub"));
    }

    #[test]
    fn refuses_a_key_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        load_or_create_key(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_key(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn rejects_malformed_key_files() {
        assert!(parse_public_key("ed25519:AAAA").is_none());
        assert!(parse_public_key("rsa:xyz").is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "garbage").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_signing_key(&path).is_err());
    }
}
