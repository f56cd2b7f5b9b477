//! The test network: one network namespace per host, each with its own address on a bridge in
//! the root namespace (where the clients run), and partitions made of blackhole routes.
//!
//! A cut link `a -> b` is a `blackhole` route to `b`'s address inside `a`'s namespace: what `a`
//! sends to `b` is dropped silently, as by a lost cable. TCP needs both directions, so the
//! nemesis always cuts links in pairs. Clients on the bridge keep reaching every host: a client
//! of a minority member sees what a client of a partitioned etcd member would.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

/// A directed link from one host to another (host indices).
pub type Link = (usize, usize);

/// Why the network could not be set up or changed.
#[derive(Debug)]
pub struct NetError(pub String);

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetError {}

/// The namespaces, the bridge and the links currently cut. Dropping it removes them all.
pub struct Net {
    /// Unique per run (from the pid), in every interface and namespace name, so that runs side
    /// by side and leftovers of a killed run never collide.
    tag: String,
    /// The third octet of 10.231.X.0/24, the run's subnet.
    subnet: u8,
    /// Namespace names, one per host.
    namespaces: Vec<String>,
    /// Directed links currently blackholed.
    cut: BTreeSet<Link>,
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Namespaces of earlier runs whose process is gone (a run killed before it could clean up).
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("bchaos-") else { continue };
        let pid = rest.split('-').next().and_then(|p| u32::from_str_radix(p, 16).ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &format!("bcb{}", rest.split('-').next().unwrap_or(""))]);
        }
    }
}

impl Net {
    /// Whether this machine lets us make namespaces (root, iproute2).
    pub fn available() -> bool {
        let probe = format!("bchaos-probe{}", std::process::id());
        let ok = ip(&["netns", "add", &probe]).is_ok();
        if ok {
            let _ = ip(&["netns", "del", &probe]);
        }
        ok
    }

    /// Creates `hosts` namespaces on a fresh bridge.
    pub fn create(hosts: usize) -> Result<Net, NetError> {
        assert!(hosts < 250, "at most 249 hosts per subnet");
        remove_leftovers();
        let pid = std::process::id();
        // Interface names are at most 15 bytes: "bcb" + 5 hex + "h" + 2 digits fits.
        let tag = format!("{:05x}", pid & 0xfffff);
        let subnet = (pid % 250) as u8;
        let mut net = Net { tag, subnet, namespaces: Vec::new(), cut: BTreeSet::new() };
        net.build(hosts).map(|()| net)
    }

    fn bridge(&self) -> String {
        format!("bcb{}", self.tag)
    }

    fn build(&mut self, hosts: usize) -> Result<(), NetError> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.client_addr()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for h in 0..hosts {
            let ns = format!("bchaos-{}-{h}", self.tag);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let outside = format!("bcv{}h{h}", self.tag);
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(h)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// How many hosts.
    pub fn hosts(&self) -> usize {
        self.namespaces.len()
    }

    /// Host `h`'s address.
    pub fn addr(&self, h: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, h as u8 + 1)
    }

    /// The root namespace's address on the bridge (where clients connect from).
    pub fn client_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 254)
    }

    /// A command that runs `program` inside host `h`'s namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's).
    pub fn command(&self, h: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespaces[h]]).arg(program);
        c
    }

    /// Makes exactly `links` cut (every other link works), changing only what differs.
    pub fn set_cut(&mut self, links: &BTreeSet<Link>) -> Result<(), NetError> {
        let heal: Vec<Link> = self.cut.difference(links).copied().collect();
        let cut: Vec<Link> = links.difference(&self.cut).copied().collect();
        for (a, b) in heal {
            ip(&["-n", &self.namespaces[a], "route", "del", "blackhole", &format!("{}/32", self.addr(b))])?;
            self.cut.remove(&(a, b));
        }
        for (a, b) in cut {
            ip(&["-n", &self.namespaces[a], "route", "add", "blackhole", &format!("{}/32", self.addr(b))])?;
            self.cut.insert((a, b));
        }
        Ok(())
    }

    /// The links cut now.
    pub fn cut(&self) -> &BTreeSet<Link> {
        &self.cut
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
