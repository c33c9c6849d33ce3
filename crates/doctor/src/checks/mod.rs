//! The checks, over real sockets (tokio), a module per check. Every check has its own deadline, so a network that
//! drops everything but 80/443 makes checks fail in seconds instead of hanging (field note 10). Independent checks
//! run at once. Each check returns its typed fact ([`crate::facts`]); [`run_all`] gathers them.
//!
//! Order: signaling endpoints (all at once) → the ICE servers (from `/api/ice-servers` or flags) → STUN, every TURN
//! transport, the NAT probes and IPv6 (all at once) → the relay round trip and throughput over a transport that
//! worked.

pub mod ice_servers;
pub mod ipv6;
pub mod nat;
pub mod net;
pub mod relay;
pub mod signaling;
pub mod stun;
pub mod throughput;
pub mod turn;
pub mod udp_egress;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::client::Timing;
use crate::facts::{Facts, NatFact};
use crate::ice::{IceUrl, ServerSpec, Transport};
use crate::progress::Progress;

/// Everything the checks need to know, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The HTTP proxy every TCP connection goes through, where it applies to the host ([`Settings::proxy_for`]).
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    pub server: ServerSpec,
    pub server_label: String,
    pub token: Option<String>,
    pub turn_user: Option<String>,
    pub turn_password: Option<String>,
    pub stun: Vec<IceUrl>,
    pub turn: Vec<IceUrl>,
    pub insecure: bool,
    pub hairpin: bool,
    pub throughput: Option<Duration>,
    /// Deadline of each check's network step (connect, handshake, transaction).
    pub timeout: Duration,
    /// First STUN retransmission timeout over UDP.
    pub rto: Duration,
    /// How long to wait for a filtering or hairpin probe to arrive.
    pub probe_wait: Duration,
    /// Ports probed besides the server's own; 0 skips.
    pub https_port: u16,
    pub http_port: u16,
    pub packets: u32,
    pub interval: Duration,
}

impl Settings {
    /// The proxy for connections to `host`, if one is set and `NO_PROXY` does not exempt the host.
    pub fn proxy_for(&self, host: &str) -> Option<Arc<crate::proxy::Proxy>> {
        self.proxy.as_ref().filter(|p| p.applies_to(host)).cloned()
    }

    fn timing(&self) -> Timing {
        Timing {
            rto: self.rto,
            limit: self.timeout,
        }
    }
}

/// Starts `tasks` at once, each tagged with its place.
fn spawn_all<T: Send + 'static>(
    tasks: impl IntoIterator<Item = impl Future<Output = T> + Send + 'static>,
) -> JoinSet<(usize, T)> {
    let mut set = JoinSet::new();
    for (i, task) in tasks.into_iter().enumerate() {
        set.spawn(async move { (i, task.await) });
    }
    set
}

/// The results of [`spawn_all`]'s tasks in the order given (a task that panicked is left out).
async fn in_order<T: 'static>(mut set: JoinSet<(usize, T)>) -> Vec<T> {
    let mut done = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(pair) = joined {
            done.push(pair);
        }
    }
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, t)| t).collect()
}

/// Runs every check; what they found, for the verdict and the report.
pub async fn run_all(s: Settings, progress: Arc<Progress>) -> Facts {
    let s = Arc::new(s);

    let signaling = in_order(spawn_all(
        signaling::endpoints(&s)
            .into_iter()
            .map(|e| signaling::check(s.clone(), e, progress.clone())),
    ))
    .await;
    let ice = ice_servers::check(&s, &signaling, &progress).await;

    // STUN, TURN, NAT and IPv6 at once.
    let stun_urls = stun::urls(&ice.config);
    let turn_targets = turn::targets(&s, &ice.config, ice.credential.is_some());
    let stun_set = spawn_all(
        stun_urls
            .iter()
            .map(|u| stun::check(s.clone(), u.clone(), progress.clone())),
    );
    let turn_set = spawn_all(
        turn_targets
            .into_iter()
            .map(|t| turn::check(s.clone(), t, ice.credential.clone(), progress.clone())),
    );
    let ipv6_task = tokio::spawn(ipv6::check(
        s.clone(),
        stun_urls.first().map(|u| u.port),
        progress.clone(),
    ));
    // The NAT probes need a STUN address that answers: the STUN checks first (a round trip where the first server
    // works), then the probes from the first server that answered, alongside the TURN checks. From the first
    // address whatever it did, a dead one left the NAT untested while another answered.
    let stun_addrs = nat::stun_addresses(&s, &stun_urls).await;
    let stun = in_order(stun_set).await;
    let answered = stun.iter().find(|f| f.binding.ok()).and_then(|f| f.server);
    let primary = answered.or_else(|| stun_addrs.first().copied());
    let stun_addrs: Vec<_> = primary
        .into_iter()
        .chain(stun_addrs.iter().copied().filter(|a| Some(*a) != primary))
        .collect();
    let nat_task = primary.map(|primary| {
        let relay = ice
            .config
            .turn
            .iter()
            .find(|u| u.transport == Transport::Udp)
            .cloned()
            .zip(ice.credential.clone());
        tokio::spawn(nat::check(
            s.clone(),
            primary,
            stun_addrs.clone(),
            relay,
            progress.clone(),
        ))
    });
    let turn = in_order(turn_set).await;
    let nat = match nat_task {
        Some(t) => t.await.ok(),
        None => None,
    };
    let ipv6 = ipv6_task.await.unwrap_or_default();
    let nat = NatFact::with_presence_over_streams(nat, &turn, &net::local_ips());

    // Relay round trip over the best transport that worked.
    let mut relay = None;
    let mut throughput = None;
    let best: Option<IceUrl> = [Transport::Udp, Transport::Tcp, Transport::Tls]
        .into_iter()
        .find_map(|tr| {
            turn.iter()
                .find(|t| t.ok() && t.transport() == tr)
                .map(|t| t.url.clone())
        });
    if let (Some(url), Some(cred)) = (best, ice.credential.clone()) {
        let (fact, pair) = relay::round_trip(s.clone(), url, cred, progress.clone()).await;
        // A → relay → B: half the relay test's round trip (A → relay → B → relay → A).
        let one_way = Duration::from_secs_f64(fact.rtt.p50.unwrap_or(0.0).max(0.0) / 2e3);
        relay = Some(fact);
        if let Some((mut a, mut b)) = pair {
            if let Some(secs) = s.throughput {
                throughput = Some(throughput::check(&s, &mut a, &mut b, secs, one_way, &progress).await);
            }
            let _ = tokio::join!(timeout(s.timeout, a.release()), timeout(s.timeout, b.release()));
        }
    }

    // STUN over UDP got no answer: is UDP blocked, or only the STUN/TURN port? Through a relay over TCP or TLS.
    let stun_failed = !stun.is_empty() && stun.iter().all(|f| !f.binding.ok());
    // Over the stream a browser here would use (the verdict names the same one).
    let stream = crate::verdict::best_stream_turn(&turn).map(|t| t.url.clone());
    // Not through a proxy: the relay's permission would be for the address the server saw, the proxy's, and the
    // probe's datagrams leave through this network's own NAT, from another address: dropped, "UDP blocked" or not.
    let udp_egress = match (stun_failed, stream, ice.credential.clone()) {
        (true, Some(url), Some(cred)) if s.proxy_for(&url.host).is_none() => {
            Some(udp_egress::check(s.clone(), url, cred, progress.clone()).await)
        }
        _ => None,
    };

    Facts {
        server: s.server_label.clone(),
        insecure: s.insecure,
        // Named when connections to the server went through it (not when NO_PROXY exempted the server).
        proxy: s.proxy_for(&s.server.host).map(|p| p.label()),
        signaling,
        ice_servers: ice.fact,
        stun,
        turn,
        nat,
        ipv6,
        relay,
        throughput,
        udp_egress,
    }
}
