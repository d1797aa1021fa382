//! Real `redis-server` processes on free loopback ports, stopped when dropped: one server (plain
//! or TLS, with a certificate of a test CA made here), or a 3-master Redis Cluster made by
//! `redis-cli --cluster create`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variables of libfaketime: the servers run on the real clock even when the tests
/// run under `faketime` (they measure real timeouts; expiries are sent relative).
/// (`redis-server` hangs at start with libfaketime preloaded.)
const FAKETIME_VARS: [&str; 5] = [
    "LD_PRELOAD",
    "FAKETIME",
    "FAKETIME_NO_CACHE",
    "FAKETIME_DONT_FAKE_MONOTONIC",
    "DONT_FAKE_MONOTONIC",
];

fn need(program: &str) {
    // Installed here if missing (as root): the package has both programs.
    let found = super::system::ensure(program, &[], "redis-server");
    assert!(
        found,
        "`{program}` not found: these tests need a real Redis; install the Debian package \
         redis-server (`apt-get install redis-server`; the tests do it themselves as root)"
    );
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    for v in FAKETIME_VARS {
        c.env_remove(v);
    }
    c
}

/// A `redis-cli` call against `port` (with `options`, e.g. TLS's); its standard output.
fn cli(port: u16, options: &[String], args: &[&str]) -> String {
    let out = command("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(options)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Cluster,
    /// TLS only (no plain port), with `server.pem` / `server.key` signed by `ca.pem`.
    Tls,
}

/// One `redis-server` process.
pub struct Server {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    mode: Mode,
}

impl Server {
    /// A server without persistence on a free port, ready when this returns.
    pub fn start() -> Self {
        Self::start_with(Mode::Plain)
    }

    /// A server that speaks TLS only, with a certificate for 127.0.0.1 signed by a CA of its
    /// own ([`Server::ca_file`]), valid from 1975 to 4096 (the tests also run under faketime).
    pub fn start_tls() -> Self {
        Self::start_with(Mode::Tls)
    }

    fn start_with(mode: Mode) -> Self {
        need("redis-server");
        // A port taken between `free_port` and the server's bind: another try, another port.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            if mode == Mode::Tls {
                write_certificates(dir.path());
            }
            let port = free_port();
            let child = Self::spawn(dir.path(), port, mode);
            let mut server = Self {
                port,
                child,
                dir,
                mode,
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("redis-server did not start (5 tries)")
    }

    fn spawn(dir: &Path, port: u16, mode: Mode) -> Child {
        let mut c = command("redis-server");
        let port = port.to_string();
        if mode == Mode::Tls {
            c.args([
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(dir.join("server.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"));
        } else {
            c.args(["--port", &port]);
        }
        c.args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if mode == Mode::Cluster {
            c.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .args(["--cluster-config-file", "nodes.conf"]);
        }
        c.spawn().unwrap()
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.cli(&["PING"]).trim() == "PONG" {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A `redis-cli` call against this server (over TLS for a TLS server).
    pub fn cli(&self, args: &[&str]) -> String {
        let options = match self.mode {
            Mode::Tls => vec!["--tls".into(), "--cacert".into(), self.ca_file()],
            _ => Vec::new(),
        };
        cli(self.port, &options, args)
    }

    /// The CA certificate (PEM) a TLS server's certificate is signed by.
    pub fn ca_file(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    pub fn url(&self) -> String {
        let scheme = if self.mode == Mode::Tls {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL): what it held is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = Self::spawn(self.dir.path(), self.port, self.mode);
            if self.wait_ready() {
                return;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} failed");
    }

    /// SIGSTOP: the server keeps its port and answers nothing.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of three masters (no replicas), all slots covered when this returns.
pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    pub fn start() -> Self {
        need("redis-cli");
        let nodes: Vec<Server> = (0..3).map(|_| Server::start_with(Mode::Cluster)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = command("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    /// The nodes' URLs, as `TOKCACHE_REDIS` takes them (comma-separated).
    pub fn spec(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Server::url).collect();
        urls.join(",")
    }

    /// Keys in the whole cluster (`DBSIZE` of each master).
    pub fn dbsize(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap())
            .sum()
    }
}

/// A test CA (`ca.pem`) and a certificate for 127.0.0.1 it signed (`server.pem`,
/// `server.key`), in `dir`.
fn write_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tokcache test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    // Its own subject: with the CA's (rcgen's default), it would read as self-signed.
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}
