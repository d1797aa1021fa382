//! The connections to the shared tier's server or cluster that its lookups and its writer
//! use, with a back-off after a failure.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{ConnectionLike, IntoConnectionInfo, RedisError, RedisResult};

use super::{Counters, Settings};
use crate::error::{Error, Result};
use crate::keys::Key;

/// Connections kept for lookups between uses (a lookup takes one, or makes one).
const IDLE_CONNECTIONS: usize = 8;
/// The first back-off after a failure, and the longest (it doubles in between).
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the shared tier is: one server, or a cluster.
enum Target {
    One(Box<redis::Client>),
    /// The client, and the first node's settings (password, database) for reaching each
    /// master on its own.
    Cluster(Box<(redis::cluster::ClusterClient, redis::ConnectionInfo)>),
}

/// A connection to the shared tier.
pub(super) enum Connection {
    One(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Connection {
    pub(super) fn as_like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Connection::One(c) => c,
            Connection::Cluster(c) => &mut **c,
        }
    }

    /// Sends `cmds` in one pipeline and checks every reply.
    pub(super) fn pipeline(&mut self, cmds: Vec<redis::Cmd>) -> RedisResult<()> {
        match self {
            Connection::One(c) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query::<Vec<redis::Value>>(c).map(drop)
            }
            Connection::Cluster(c) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query::<Vec<redis::Value>>(c).map(drop)
            }
        }
    }
}

/// Whether the tier is usable now: after a failure, requests wait out a back-off that doubles
/// with each failure in a row.
struct Health {
    down_until: Option<Instant>,
    backoff: Duration,
}

/// The connections to the shared tier, the back-off, and the counters.
pub(super) struct Link {
    target: Target,
    namespace: String,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    health: Mutex<Health>,
    pub(super) counters: Counters,
}

impl Link {
    pub(super) fn new(settings: &Settings) -> Result<Self> {
        let invalid = |e: RedisError| Error::InvalidSetting {
            name: "redis",
            reason: format!("{}: {e}", settings.nodes.join(",")),
        };
        let t = settings.timeout;
        let target = if settings.cluster {
            let client =
                redis::cluster::ClusterClient::builder(settings.nodes.iter().map(String::as_str))
                    .connection_timeout(t)
                    .response_timeout(t)
                    // One retry: a MOVED redirect after a resharding.
                    .retries(1)
                    .min_retry_wait(1)
                    .max_retry_wait(t.as_millis().try_into().unwrap_or(u64::MAX).max(1))
                    .build()
                    .map_err(invalid)?;
            let first = settings.nodes[0]
                .as_str()
                .into_connection_info()
                .map_err(invalid)?;
            Target::Cluster(Box::new((client, first)))
        } else {
            Target::One(Box::new(
                redis::Client::open(settings.nodes[0].as_str()).map_err(invalid)?,
            ))
        };
        Ok(Self {
            target,
            namespace: settings.namespace.clone(),
            timeout: t,
            idle: Mutex::new(Vec::new()),
            health: Mutex::new(Health {
                down_until: None,
                backoff: BACKOFF_MIN,
            }),
            counters: Counters::default(),
        })
    }

    /// The Redis key of an entry: `{namespace}:{prefix}_{md5(key)}`.
    pub(super) fn key_of(&self, prefix: &str, key: &Key<'_>) -> String {
        format!("{}:{}", self.namespace, key.logical_name(prefix))
    }

    pub(super) fn pattern(&self) -> String {
        format!("{}:*", self.namespace)
    }

    /// A new connection, every wait bounded by the timeout.
    pub(super) fn connect(&self) -> RedisResult<Connection> {
        match &self.target {
            Target::One(client) => {
                let c = client.get_connection_with_timeout(self.timeout)?;
                c.set_read_timeout(Some(self.timeout))?;
                c.set_write_timeout(Some(self.timeout))?;
                Ok(Connection::One(c))
            }
            Target::Cluster(c) => Ok(Connection::Cluster(Box::new(c.0.get_connection()?))),
        }
    }

    /// Whether requests are held off now (counted as skipped).
    pub(super) fn backing_off(&self) -> bool {
        let h = self.health.lock();
        h.down_until.is_some_and(|t| Instant::now() < t)
    }

    /// Runs `f` on an idle connection (or a new one); `None` if the tier is backing off or `f`
    /// fails (counted; the connection is dropped and the back-off starts).
    pub(super) fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut dyn ConnectionLike) -> RedisResult<T>,
    ) -> Option<T> {
        if self.backing_off() {
            Counters::add(&self.counters.skipped, 1);
            return None;
        }
        let idle = self.idle.lock().pop();
        let result = idle
            .map_or_else(|| self.connect(), Ok)
            .and_then(|mut c| f(c.as_like()).map(|v| (v, c)));
        match result {
            Ok((v, c)) => {
                self.succeeded();
                let mut idle = self.idle.lock();
                if idle.len() < IDLE_CONNECTIONS {
                    idle.push(c);
                }
                Some(v)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    pub(super) fn succeeded(&self) {
        let mut h = self.health.lock();
        if h.down_until.is_some() {
            log::info!("shared tier reachable again");
        }
        h.down_until = None;
        h.backoff = BACKOFF_MIN;
    }

    /// Counts a failure; one of the connection (refused, dropped, timed out: not an error reply
    /// such as `WRONGTYPE`) starts or lengthens the back-off, and drops the idle connections
    /// (likely as broken as the one that failed).
    pub(super) fn failed(&self, e: &RedisError) {
        self.counters.failure(e.is_timeout());
        let unreachable = e.is_timeout()
            || e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_cluster_error();
        if !unreachable {
            log::debug!("shared tier: {e}");
            return;
        }
        self.idle.lock().clear();
        let mut h = self.health.lock();
        if h.down_until.is_none() {
            log::warn!("shared tier unreachable, going on locally: {e}");
        }
        h.down_until = Some(Instant::now() + h.backoff);
        h.backoff = (h.backoff * 2).min(BACKOFF_MAX);
    }

    /// The servers that hold this cache's keys: the one server, or each master of the cluster
    /// as `CLUSTER NODES` lists them.
    pub(super) fn servers(&self) -> RedisResult<Vec<redis::ConnectionInfo>> {
        match &self.target {
            Target::One(client) => Ok(vec![client.get_connection_info().clone()]),
            Target::Cluster(c) => {
                let first = &c.1;
                let Connection::Cluster(mut c) = self.connect()? else {
                    unreachable!("a cluster target makes cluster connections")
                };
                let nodes: String = c
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES"),
                        redis::cluster_routing::RoutingInfo::SingleNode(
                            redis::cluster_routing::SingleNodeRoutingInfo::Random,
                        ),
                    )
                    .and_then(|v| redis::from_redis_value(v).map_err(RedisError::from))?;
                Ok(masters(&nodes)
                    .map(|(host, port)| {
                        first
                            .clone()
                            .set_addr(redis::ConnectionAddr::Tcp(host.into(), port))
                    })
                    .collect())
            }
        }
    }
}

/// The masters in the output of `CLUSTER NODES` (`id host:port@cport[,hostname] flags ...`).
fn masters(nodes: &str) -> impl Iterator<Item = (&str, u16)> {
    nodes.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let addr = fields.nth(1)?;
        let flags = fields.next()?;
        if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
            return None;
        }
        let addr = addr.split(['@', ',']).next()?;
        let (host, port) = addr.rsplit_once(':')?;
        Some((host, port.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_of_cluster_nodes() {
        let out = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
aaaa 10.0.0.9:30009@31009,node-9 master,fail - 0 0 9 disconnected
";
        let m: Vec<_> = masters(out).collect();
        assert_eq!(m, [("127.0.0.1", 30002), ("127.0.0.1", 30001)]);
    }
}
