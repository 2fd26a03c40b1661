//! The audit signing key: created on first use (mode 0600, public key beside it), refused when readable
//! by group or others. The file formats and loaders are the capability module's
//! ([`crate::capability::keys`]): secret `ed25519-secret:<base64 of the 32-byte seed>`, public
//! `ed25519:<base64 of 32 bytes>`; this module adds only create-on-first-use.
//!
//! Does not protect against: a key file readable by the same user (any process of that user can sign);
//! that is why the sandbox hides it from the agent.

use super::AuditError;
use crate::capability::keys as cap_keys;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

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
    match fs::symlink_metadata(path) {
        Ok(_) => load_signing_key(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(path),
        Err(e) => Err(AuditError::io(path, e)),
    }
}

/// Loads an existing signing key, refusing one that group or others can read (the message says
/// `chmod 600`).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    cap_keys::load_signing_key(path).map_err(|e| AuditError::Key(e.to_string()))
}

/// Loads a public key file (`ed25519:<base64>`).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    cap_keys::load_verifying_key(path).map_err(|e| AuditError::Key(e.to_string()))
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
        "{}{}\n",
        cap_keys::SECRET_PREFIX,
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
    fs::write(
        &pub_path,
        format!("{}\n", cap_keys::public_key_text(&key.verifying_key())),
    )
    .map_err(|e| AuditError::io(&pub_path, e))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "garbage").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_signing_key(&path).is_err());
    }
}
