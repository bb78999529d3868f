//! A real SMTP server for the tests that send mail (login codes, toll-fraud alerts):
//! `tests/peers/smtp_sink.py` on aiosmtpd, storing every message it accepts as a file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Sink {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl Sink {
    /// Listens on a free loopback port and stores mail in `dir`; with `tls` (certificate and
    /// key) it offers STARTTLS and refuses mail before it.
    pub fn start(dir: PathBuf, tls: Option<(&Path, &Path)>) -> Sink {
        std::fs::create_dir_all(&dir).expect("mail dir");
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/smtp_sink.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script).arg(port.to_string()).arg(&dir);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the SMTP sink's first line");
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        Sink { child, dir, port }
    }

    /// Every message received so far, oldest first (each starts with the sink's
    /// `X-Test-TLS:` and `X-Test-Rcpt:` lines).
    pub fn mails(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("mail dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("mail file"))
            .collect()
    }

    /// The messages once there are at least `n` (panics after `timeout`).
    pub fn wait_mails(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "{} mail(s) arrived, not {n}: {mails:?}",
                mails.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
