//! The balsa processes under test: one per host, started inside the host's namespace, killed,
//! paused, resumed and restarted by the nemesis, added to and removed from the cluster.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::net::Net;

/// The client port on every host (each host has its own address, so the same port everywhere).
pub const CLIENT_PORT: u16 = 2379;

/// One host's server.
pub struct Node {
    /// `n{host}`, the member name.
    pub name: String,
    /// Which incarnation of the member this host runs: a host removed and later added again
    /// joins as a new member, with a new peer port (member ids derive from the peer URL) and an
    /// empty data directory.
    pub generation: u32,
    /// Whether the host is a member of the cluster as far as the harness knows (it has been
    /// started as a founder or added, and not removed).
    pub member: bool,
    /// The running process, if any.
    pub process: Option<Child>,
    /// Stopped with SIGSTOP and not yet resumed.
    pub paused: bool,
    /// The `--initial-cluster` it was first started with, given again on restarts (as an
    /// operator's unit file would).
    pub initial_cluster: String,
    /// `--initial-cluster-state` likewise (`new` for founders, `existing` for added members).
    pub initial_state: String,
}

/// The servers, their network and where they keep data and logs.
pub struct Cluster {
    /// The namespaces and the partitions between them.
    pub net: Net,
    /// The `balsa` binary.
    bin: PathBuf,
    /// Data directories and logs go under it.
    dir: PathBuf,
    /// One Raft tick (the election timeout is ten).
    tick_ms: u64,
    /// One per host; the first `founders` start as the cluster.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Plans a cluster over `net`'s hosts; none is started.
    pub fn new(net: Net, bin: &Path, dir: &Path, tick_ms: u64) -> Self {
        let nodes = (0..net.hosts())
            .map(|h| Node {
                name: format!("n{h}"),
                generation: 0,
                member: false,
                process: None,
                paused: false,
                initial_cluster: String::new(),
                initial_state: String::new(),
            })
            .collect();
        Self { net, bin: bin.to_path_buf(), dir: dir.to_path_buf(), tick_ms, nodes }
    }

    /// `http://ADDR:2379` of host `h`.
    pub fn client_url(&self, h: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.net.addr(h))
    }

    /// Host `h`'s peer URL in its current generation.
    pub fn peer_url(&self, h: usize) -> String {
        format!("http://{}:{}", self.net.addr(h), 2380 + self.nodes[h].generation)
    }

    /// Every host's client URL (clients are given all of them, members or not).
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|h| self.client_url(h)).collect()
    }

    /// Host `h`'s data directory for its current generation.
    pub fn data_dir(&self, h: usize) -> PathBuf {
        self.dir.join(format!("n{h}.g{}", self.nodes[h].generation))
    }

    /// Host `h`'s log (every generation appends to it).
    pub fn log_path(&self, h: usize) -> PathBuf {
        self.dir.join(format!("n{h}.log"))
    }

    /// Which host has this peer URL (any generation up to the current one).
    pub fn host_of_peer_url(&self, url: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&h| self.peer_url(h) == url.trim_end_matches('/'))
    }

    /// `--initial-cluster` for the hosts listed.
    pub fn initial_cluster(&self, hosts: &[usize]) -> String {
        hosts
            .iter()
            .map(|&h| format!("{}={}", self.nodes[h].name, self.peer_url(h)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts host `h`'s server (again) with the given `--initial-cluster` and state.
    pub fn start(&mut self, h: usize, initial_cluster: &str, state: &str) -> std::io::Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path(h))?;
        let child = self
            .net
            .command(h, &self.bin)
            .args(["server", "--name", &self.nodes[h].name, "--tick-ms", &self.tick_ms.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(h))
            .args(["--listen-client-urls", &self.client_url(h)])
            .args(["--listen-peer-urls", &self.peer_url(h)])
            .args(["--initial-cluster", initial_cluster, "--initial-cluster-state", state])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let node = &mut self.nodes[h];
        node.process = Some(child);
        node.initial_cluster = initial_cluster.to_string();
        node.initial_state = state.to_string();
        node.paused = false;
        Ok(())
    }

    /// Restarts a member whose process is down, with its data directory as it was.
    pub fn restart(&mut self, h: usize) -> std::io::Result<()> {
        let (cluster, state) = (self.nodes[h].initial_cluster.clone(), self.nodes[h].initial_state.clone());
        self.start(h, &cluster, &state)
    }

    /// Sends `signal` (a kill(1) name) to host `h`'s server, if it runs.
    pub fn signal(&mut self, h: usize, signal: &str) {
        if let Some(child) = &self.nodes[h].process {
            let _ = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        }
    }

    /// kill -9, and reaps the process.
    pub fn kill(&mut self, h: usize) {
        if self.nodes[h].paused {
            // A stopped process dies on SIGKILL too, but resume it first so nothing lingers.
            self.signal(h, "CONT");
        }
        if let Some(mut child) = self.nodes[h].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[h].paused = false;
    }

    /// SIGSTOP.
    pub fn pause(&mut self, h: usize) {
        if self.nodes[h].process.is_some() && !self.nodes[h].paused {
            self.signal(h, "STOP");
            self.nodes[h].paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, h: usize) {
        if self.nodes[h].paused {
            self.signal(h, "CONT");
            self.nodes[h].paused = false;
        }
    }

    /// Whether host `h`'s process has exited by itself (a crash: the nemesis never expects it).
    pub fn exited(&mut self, h: usize) -> Option<std::process::ExitStatus> {
        self.nodes[h].process.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Hosts that are members, in order.
    pub fn members(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&h| self.nodes[h].member).collect()
    }

    /// Hosts that are not members (spares to add).
    pub fn spares(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&h| !self.nodes[h].member).collect()
    }

    /// Kills every process.
    pub fn kill_all(&mut self) {
        for h in 0..self.nodes.len() {
            self.kill(h);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
