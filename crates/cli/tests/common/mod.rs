//! Helpers for tests that run the real `balsa` binary. Every wait here is bounded.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn balsa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_balsa"))
}

#[path = "../../../server/tests/common/ports.rs"]
mod ports;
#[allow(unused_imports)]
pub use ports::free_port;

/// Runs `balsa ARGS` expecting a failure whose stderr contains `expected`.
pub fn fails_with(cmd: &mut Command, expected: &str) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} should fail; stderr: {err}");
    assert!(err.contains(expected), "{cmd:?}: expected {expected:?} in {err:?}");
    err
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh folder named after the test and this process.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("balsa-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A path inside.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) on drop if still running.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends SIGTERM and waits (bounded) for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        signal(&self.0, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s.success();
            }
            assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends a signal with kill(1) (the crate forbids unsafe code, so no libc call).
pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(ok.success(), "kill -{name} failed");
}

/// One member's ports.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// Client URL port.
    pub client: u16,
    /// Peer URL port.
    pub peer: u16,
}

/// A cluster of member processes on loopback.
pub struct Cluster {
    /// Member ports, in `--initial-cluster` order (member id = index + 1).
    pub ports: Vec<Ports>,
    /// Where each member keeps its data.
    pub dirs: Vec<PathBuf>,
    /// The processes (None once stopped).
    pub procs: Vec<Option<Proc>>,
    /// One Raft tick.
    pub tick_ms: u64,
    initial_cluster: String,
}

impl Cluster {
    /// Plans (does not start) an `n`-member cluster under `root`.
    pub fn new(root: &Path, n: usize, tick_ms: u64) -> Self {
        let ports: Vec<Ports> = (0..n).map(|_| Ports { client: free_port(), peer: free_port() }).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{}", p.peer))
            .collect::<Vec<_>>()
            .join(",");
        let dirs = (0..n).map(|i| root.join(format!("m{i}"))).collect();
        Self { ports, dirs, procs: (0..n).map(|_| None).collect(), tick_ms, initial_cluster }
    }

    /// Starts member `i` (again).
    pub fn start(&mut self, i: usize) {
        let p = self.ports[i];
        let child = balsa()
            .args(["server", "--name", &format!("m{i}"), "--tick-ms", &self.tick_ms.to_string()])
            .args(["--data-dir", self.dirs[i].to_str().unwrap()])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", p.client)])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", p.peer)])
            .args(["--initial-cluster", &self.initial_cluster])
            .stdout(Stdio::null())
            .stderr(self.log(i))
            .spawn()
            .unwrap();
        self.procs[i] = Some(Proc(child));
    }

    /// Member `i`'s stderr, appended to `m{i}.log` beside its data dir (read it when a test fails).
    pub fn log(&self, i: usize) -> Stdio {
        let path = self.dirs[i].with_extension("log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().into()
    }

    /// `--initial-cluster` as given to the founding members.
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// Starts every member.
    pub fn start_all(&mut self) {
        for i in 0..self.ports.len() {
            self.start(i);
        }
    }

    /// `http://127.0.0.1:PORT` of member `i`'s client listener.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i].client)
    }
}

impl Drop for Cluster {
    /// A failing test prints each member's log (its data dir goes with the test), and whether
    /// the member had exited.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (i, proc) in self.procs.iter_mut().enumerate() {
            let state = match proc.as_mut().map(|p| p.0.try_wait()) {
                None => "stopped by the test".to_string(),
                Some(Ok(None)) => "running".to_string(),
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Err(e)) => format!("unknown: {e}"),
            };
            let log = std::fs::read_to_string(self.dirs[i].with_extension("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- member m{i} ({state}), last lines of its log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A single-member `balsa server` named `solo` (20 ms ticks) on loopback with its data in
/// `data_dir`, its output discarded. Not waited for: callers know what "ready" means to them.
pub fn spawn_single(data_dir: &Path, client: u16, peer: u16) -> Proc {
    let child = balsa()
        .args(["server", "--name", "solo", "--tick-ms", "20"])
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

/// etcd's etcdctl (3.4, Debian's etcd-client), if installed (CI installs it).
pub fn etcdctl_path() -> Option<String> {
    ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(str::to_string)
}

/// Whether Debian's etcdctl is installed (tests that need it say so and pass when it is not).
pub fn has_etcdctl() -> bool {
    let found = Command::new("etcdctl").arg("version").output().is_ok();
    if !found {
        eprintln!("NOTE: etcdctl is not installed; apt-get install etcd-client to run this test");
    }
    found
}

/// `etcdctl ARGS` against `endpoints`; stdout on success.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=2s")
        .args(args)
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Retries `f` every 50 ms until it returns `Some`, for at most `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET (status code, body), or None if the connection fails.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// The value of an unlabelled metric in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
