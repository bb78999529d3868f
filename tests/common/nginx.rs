//! A real nginx for the tests: the forward-auth snippet's reverse proxy, and the reference
//! that recording downloads are compared with.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::curl;

pub fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running nginx (master and workers), stopped on drop.
pub struct Nginx {
    child: Child,
    pub prefix: PathBuf,
    pub port: u16,
}

impl Nginx {
    /// Starts nginx with its files under `prefix`; `http` is the inside of the `http {}` block
    /// (the servers), and `port` the one to wait for.
    pub fn start(prefix: &Path, port: u16, http: &str) -> Nginx {
        for dir in [
            "",
            "tmp/body",
            "tmp/proxy",
            "tmp/fastcgi",
            "tmp/uwsgi",
            "tmp/scgi",
        ] {
            std::fs::create_dir_all(prefix.join(dir)).expect("nginx folders");
        }
        let p = prefix.display();
        // Workers run as `nobody` under a root master unless told otherwise, and could not read
        // the test's private folder.
        let user = if is_root() { "user root;" } else { "" };
        let conf = format!(
            r#"{user}
daemon off;
worker_processes 1;
pid "{p}/nginx.pid";
error_log "{p}/error.log" notice;
events {{ worker_connections 256; }}
http {{
    access_log "{p}/access.log";
    client_body_temp_path "{p}/tmp/body";
    proxy_temp_path "{p}/tmp/proxy";
    fastcgi_temp_path "{p}/tmp/fastcgi";
    uwsgi_temp_path "{p}/tmp/uwsgi";
    scgi_temp_path "{p}/tmp/scgi";
{http}
}}
"#
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("stderr.log")).expect("stderr log"))
            .spawn()
            .expect("nginx is installed");
        let mut nginx = Nginx {
            child,
            prefix: prefix.to_path_buf(),
            port,
        };
        nginx.wait_for_port(port);
        nginx
    }

    pub fn error_log(&self) -> String {
        let mut s = std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.prefix.join("stderr.log")).unwrap_or_default());
        s
    }

    /// `curl -i` through nginx; `--path-as-is` so that dot segments reach nginx unchanged.
    pub fn get(&self, path: &str, extra: &[&str]) -> std::process::Output {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut args: Vec<&str> = vec!["-sS", "-i", "--max-time", "15", "--path-as-is"];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    pub fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", self.error_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nginx never opened port {port}:\n{}", self.error_log());
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM to the master: it stops its workers and exits. (A SIGKILL would leave the
        // workers running and holding the ports.)
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
