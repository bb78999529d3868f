//! The PostgreSQL password kept out of the URL: `[daemon] database_password_file` (and
//! `db copy --password-file`). It cannot live in the vault, which is inside the database it
//! opens, so it gets the master key file's rules: readable by its owner only, owned by the
//! account that runs pbxguard.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use zeroize::Zeroizing;

/// Longest password file read; a generated password is a few dozen bytes.
const MAX_PASSWORD_BYTES: u64 = 1024;

/// Why a password file was refused. No variant holds any of the file's content.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("database password file {0} does not exist")]
    Missing(PathBuf),
    #[error("cannot read database password file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database password file {path} has mode {mode:04o}; it must be 0600 or stricter (chmod 600 {path})")]
    Mode { path: PathBuf, mode: u32 },
    #[error("database password file {path} is owned by uid {owner}, not by the user running pbxguard (uid {me}); chown it")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("database password file {0} is larger than {MAX_PASSWORD_BYTES} bytes")]
    TooLarge(PathBuf),
    #[error("database password file {0} must hold the password as UTF-8 text on one line")]
    Format(PathBuf),
    #[error("database password file {0} is empty")]
    Empty(PathBuf),
}

/// Reads the password in `path`: one line, its trailing `\n` or `\r\n` removed.
pub fn read_password_file(path: &Path) -> Result<SecretString, PasswordFileError> {
    let path = path.to_path_buf();
    // Open first, then judge the opened file itself: no window to swap the path in between.
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PasswordFileError::Missing(path))
        }
        Err(source) => return Err(PasswordFileError::Read { path, source }),
    };
    let meta = file.metadata().map_err(|source| PasswordFileError::Read {
        path: path.clone(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PasswordFileError::Mode { path, mode });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(PasswordFileError::Owner {
            path,
            owner: meta.uid(),
            me,
        });
    }
    let mut raw = Zeroizing::new(Vec::with_capacity(64));
    file.take(MAX_PASSWORD_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|source| PasswordFileError::Read {
            path: path.clone(),
            source,
        })?;
    if raw.len() as u64 > MAX_PASSWORD_BYTES {
        return Err(PasswordFileError::TooLarge(path));
    }
    let mut len = raw.len();
    if raw.ends_with(b"\r\n") {
        len -= 2;
    } else if raw.ends_with(b"\n") {
        len -= 1;
    }
    let line = &raw[..len];
    if line.is_empty() {
        return Err(PasswordFileError::Empty(path));
    }
    // A second line would be sent as part of the password: almost surely a wrong file.
    if line.contains(&b'\n') || line.contains(&b'\r') || line.contains(&0) {
        return Err(PasswordFileError::Format(path));
    }
    match std::str::from_utf8(line) {
        Ok(text) => Ok(SecretString::from(text.to_owned())),
        Err(_) => Err(PasswordFileError::Format(path)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use secrecy::ExposeSecret;

    use super::*;

    fn file(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn one_line_is_read_and_its_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        for (content, expected) in [
            (&b"s3cret pass\n"[..], "s3cret pass"),
            (b"s3cret\r\n", "s3cret"),
            (b"no-newline", "no-newline"),
            (b" spaced \n", " spaced "),
        ] {
            let path = file(dir.path(), "pw", content, 0o600);
            let pw = read_password_file(&path).unwrap();
            assert_eq!(pw.expose_secret(), expected);
        }
    }

    #[test]
    fn loose_modes_empty_and_odd_files_are_refused_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let loose = file(dir.path(), "loose", b"hunter2-loose\n", 0o640);
        let e = read_password_file(&loose).unwrap_err();
        assert!(
            matches!(e, PasswordFileError::Mode { mode: 0o640, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");

        let empty = file(dir.path(), "empty", b"\n", 0o600);
        assert!(matches!(
            read_password_file(&empty),
            Err(PasswordFileError::Empty(_))
        ));
        let two = file(dir.path(), "two", b"hunter2\nsecond\n", 0o600);
        let e = read_password_file(&two).unwrap_err();
        assert!(matches!(e, PasswordFileError::Format(_)), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let binary = file(dir.path(), "binary", b"\xff\xfe\n", 0o600);
        assert!(matches!(
            read_password_file(&binary),
            Err(PasswordFileError::Format(_))
        ));
        let big = file(dir.path(), "big", &[b'a'; 1025], 0o600);
        assert!(matches!(
            read_password_file(&big),
            Err(PasswordFileError::TooLarge(_))
        ));
        assert!(matches!(
            read_password_file(&dir.path().join("absent")),
            Err(PasswordFileError::Missing(_))
        ));
    }

    #[test]
    fn a_file_of_another_owner_is_refused() {
        // Only root can hand a file to another account; elsewhere there is nothing to test.
        if rustix::process::geteuid().as_raw() != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "other", b"pw\n", 0o600);
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let e = read_password_file(&path).unwrap_err();
        assert!(
            matches!(e, PasswordFileError::Owner { owner: 65534, .. }),
            "{e}"
        );
    }
}
