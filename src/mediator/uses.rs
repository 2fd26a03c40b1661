//! `max_uses` counts that outlive a session (`[mediator] use_counts = "file"`).
//!
//! The file is JSON: `{"<token id>": {"<capability index>": uses}}`. Every counted call holds an exclusive
//! lock on it from the read that feeds the decision to the write of the new count, so two sessions using
//! one token cannot both spend its last use. Without `use_counts`, counts live for one session only.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use nix::fcntl::Flock;

pub type Uses = HashMap<(String, usize), u64>;

/// The locked state file; the lock is released when this is dropped.
pub struct LockedCounts {
    file: Flock<File>,
}

fn err(path: &Path, what: impl std::fmt::Display) -> String {
    format!("use-count file {}: {what}", path.display())
}

impl LockedCounts {
    /// Opens (creating, mode 0600) and locks the file, and reads the counts.
    pub fn open(path: &Path) -> Result<(LockedCounts, Uses), String> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // Its directory too, as for the audit log (a policy's `audit/use-counts.json` on first use).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(path, e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| err(path, e))?;
        // Never read (or block on) a FIFO or device planted at the path.
        match file.metadata() {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(err(path, "not a regular file")),
            Err(e) => return Err(err(path, e)),
        }
        let mut file = crate::lock::exclusive(file).map_err(|e| err(path, e))?;
        let mut text = String::new();
        let reader: &mut File = &mut file;
        reader
            .take(MAX_COUNTS + 1)
            .read_to_string(&mut text)
            .map_err(|e| err(path, e))?;
        if text.len() as u64 > MAX_COUNTS {
            return Err(err(
                path,
                format!("larger than {MAX_COUNTS} bytes; refusing to guess the counts"),
            ));
        }
        let uses = parse(&text).map_err(|e| err(path, e))?;
        Ok((LockedCounts { file }, uses))
    }

    /// Replaces the file's contents with `uses` (durably).
    pub fn write(&mut self, uses: &Uses) -> Result<(), String> {
        let mut by_token: std::collections::BTreeMap<
            &str,
            std::collections::BTreeMap<String, u64>,
        > = Default::default();
        for ((token, cap), n) in uses {
            by_token
                .entry(token)
                .or_default()
                .insert(cap.to_string(), *n);
        }
        let text = serde_json::to_string(&by_token).map_err(|e| e.to_string())?;
        // Overwritten in place, then cut to length: never emptied first, since an empty file reads as
        // "no uses yet" and a crash in between would reset every count. (Counts only grow, so the text
        // never gets shorter; a crash mid-write leaves text that fails to parse: refused, not guessed.)
        use std::os::unix::fs::FileExt;
        let f: &mut File = &mut self.file;
        f.write_all_at(text.as_bytes(), 0)
            .map_err(|e| e.to_string())?;
        f.set_len(text.len() as u64).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())
    }
}

/// The largest use-count file read (a count is a few dozen bytes; a token has at most a few hundred
/// capabilities).
const MAX_COUNTS: u64 = 16 << 20;

fn parse(text: &str) -> Result<Uses, String> {
    let mut uses = Uses::new();
    if text.trim().is_empty() {
        return Ok(uses);
    }
    let map: HashMap<String, HashMap<String, u64>> = serde_json::from_str(text)
        .map_err(|e| format!("malformed ({e}); refusing to guess the counts"))?;
    for (token, caps) in map {
        for (cap, n) in caps {
            // Only as written (`0`, not `00` or `+0`): another spelling would be a second count.
            let cap: usize = cap
                .parse()
                .ok()
                .filter(|i: &usize| i.to_string() == cap)
                .ok_or_else(|| format!("capability index `{cap}` is not a number as written"))?;
            uses.insert((token.clone(), cap), n);
        }
    }
    Ok(uses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_and_malformed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("uses.json");
        {
            let (mut locked, uses) = LockedCounts::open(&p).unwrap();
            assert!(uses.is_empty());
            let mut uses = uses;
            uses.insert(("ab".into(), 1), 3);
            locked.write(&uses).unwrap();
        }
        let (mut locked, uses) = LockedCounts::open(&p).unwrap();
        assert_eq!(uses.get(&("ab".to_string(), 1)), Some(&3));
        // Written in place: a shorter text leaves nothing of the longer one behind.
        let mut longer = uses.clone();
        longer.insert(("cd".into(), 0), 12345);
        locked.write(&longer).unwrap();
        locked.write(&uses).unwrap();
        drop(locked);
        let (_l, again) = LockedCounts::open(&p).unwrap();
        assert_eq!(again, uses);
        drop(_l);
        std::fs::write(&p, "{not json").unwrap();
        assert!(LockedCounts::open(&p).is_err());
        // Another spelling of an index would be a second, lower count.
        std::fs::write(&p, r#"{"ab":{"0":3,"00":0}}"#).unwrap();
        assert!(LockedCounts::open(&p).is_err());
    }
}
