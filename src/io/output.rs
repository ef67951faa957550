//! Output paths checked before the work that fills them: a run that cannot write its checkpoint, metrics
//! or logits is refused at once, naming the flag, the path and what is wrong, instead of failing after
//! an epoch and losing it.
//!
//! A path is writable when it is not a directory (for a file) or not a file (for a directory), when an
//! existing file opens for writing, and when the directory it will be written in (or, if that does not
//! exist yet, the nearest existing ancestor that will hold it) is a directory a file can be created in:
//! tried, with a probe file removed at once, since permissions alone do not say it (root, read-only
//! mounts, `/proc`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Checks that a file can be written at `path` (given as `flag`, named in the error).
pub fn check_file(flag: &str, path: &Path) -> Result<()> {
    let refuse = |why: String| Err(Error::config(flag, format!("{}: {why}", path.display())));
    if path.as_os_str().is_empty() {
        return Err(Error::config(flag, "the path is empty"));
    }
    if path.is_dir() {
        return refuse("is a directory, expected a file path".into());
    }
    if path.exists() {
        if let Err(e) = std::fs::OpenOptions::new().append(true).open(path) {
            return refuse(format!("exists and cannot be written ({e})"));
        }
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_creatable_in(flag, path, parent)
}

/// Checks that `path` (given as `flag`) is or can become a directory files can be written in.
pub fn check_dir(flag: &str, path: &Path) -> Result<()> {
    if path.exists() && !path.is_dir() {
        return Err(Error::config(
            flag,
            format!("{}: exists and is a file, expected a directory", path.display()),
        ));
    }
    check_creatable_in(flag, path, path)
}

/// `dir` (where `path` will be written) must be a writable directory, or not exist yet with a writable
/// directory as its nearest existing ancestor.
fn check_creatable_in(flag: &str, path: &Path, dir: &Path) -> Result<()> {
    let refuse = |why: String| Err(Error::config(flag, format!("{}: {why}", path.display())));
    let existing = nearest_existing(dir);
    if !existing.is_dir() {
        return refuse(format!(
            "{} is a file, so no directory can be made there",
            existing.display()
        ));
    }
    let probe = existing.join(format!(".incept-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => refuse(format!("cannot create files in {} ({e})", existing.display())),
    }
}

/// `dir` or its nearest ancestor that exists (`.` for a relative path none of whose parts exist).
fn nearest_existing(dir: &Path) -> PathBuf {
    let mut at = dir;
    loop {
        if at.exists() {
            return at.to_path_buf();
        }
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => return PathBuf::from("."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_cannot_be_written_are_named() {
        let dir = std::env::temp_dir().join(format!("incept-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a-file");
        std::fs::write(&file, "x").unwrap();
        let message = |r: Result<()>| r.unwrap_err().to_string();

        assert!(check_file("--save", &dir.join("new/deeper/ck.safetensors")).is_ok());
        assert!(check_file("--save", &file).is_ok());
        assert!(check_dir("--out", &dir.join("runs")).is_ok());
        let m = message(check_file("--save", &dir));
        assert!(m.starts_with("--save") && m.contains("is a directory"), "{m}");
        let m = message(check_dir("--out", &file));
        assert!(m.starts_with("--out") && m.contains("exists and is a file"), "{m}");
        let m = message(check_file("--step-log", &file.join("log.jsonl")));
        assert!(m.contains("a-file is a file, so no directory"), "{m}");
        // /proc takes no new files, even from root.
        let m = message(check_dir("--out", Path::new("/proc/incept-run")));
        assert!(m.contains("cannot create files in /proc"), "{m}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
