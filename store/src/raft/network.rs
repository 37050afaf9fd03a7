//! The client side of the peer transport: openraft's RPCs over gRPC, one lazily connected
//! channel per peer.
//!
//! openraft request/response types travel bincode-encoded inside [`pb::RaftMessage`]; the remote
//! side's `Result` is encoded too, so a Raft-level refusal arrives as a `RemoteError` rather than a
//! transport failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::pb::RaftMessage;
use super::pb::raft_peer_client::RaftPeerClient;
use super::{Member, NodeId, TypeConfig};

/// Largest peer message accepted (snapshot chunks and large entries).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// Channels to peers, shared by Raft replication and request forwarding.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// What this member presents to `https://` peers.
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Each peer that answered a Raft RPC or a probe this member sent it.
    active: Arc<Mutex<HashMap<NodeId, Answers>>>,
    /// The longest a peer may go without answering and still count as connected (the
    /// election timeout: several heartbeats, whatever `--heartbeat-interval` is).
    answer_gap: Duration,
}

/// How a peer has answered this member's calls, in tokio's clock (so that a simulation's
/// paused time drives it).
#[derive(Debug, Clone, Copy)]
struct Answers {
    /// Since when it has answered Raft RPCs and probes without a break (etcd's
    /// `ActiveSince`, which every member's peer streams keep); none once a call failed in
    /// transport.
    since: Option<tokio::time::Instant>,
    /// When it last answered a Raft RPC or a probe.
    heard: tokio::time::Instant,
    /// When it last answered a Raft RPC, kept through failed calls (etcd's `RecentActive`,
    /// which only Raft's own messages move).
    raft: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The member has no usable peer URL.
    #[error("member has no valid peer URL: {0}")]
    BadUrl(String),
    /// The RPC failed in transport.
    #[error("peer RPC: {0}")]
    Rpc(#[from] tonic::Status),
}

impl Peers {
    /// Peers dialled with `tls` when their URL is `https://`.
    pub fn new(tls: Option<tonic::transport::ClientTlsConfig>) -> Peers {
        Peers {
            channels: Arc::default(),
            tls,
            active: Arc::default(),
            answer_gap: Duration::from_secs(1),
        }
    }

    /// Sets how long a peer may go without answering and still count as connected.
    pub fn with_answer_gap(mut self, gap: Duration) -> Peers {
        self.answer_gap = gap;
        self
    }

    /// Since when `id` has answered this member's Raft RPCs and probes without a break; None
    /// if the last one failed in transport, or none was answered for the answer gap (openraft
    /// drops a call that outlives its timeout, so a hung or cut-off peer never fails one).
    pub fn active_since(&self, id: NodeId) -> Option<tokio::time::Instant> {
        let a = *self.active.lock().get(&id)?;
        a.since.filter(|_| a.heard.elapsed() <= self.answer_gap)
    }

    /// Whether `id` answered one of this member's Raft calls within the answer gap, whatever
    /// became of the calls since (probes do not count).
    pub fn answered_recently(&self, id: NodeId) -> bool {
        self.active
            .lock()
            .get(&id)
            .and_then(|a| a.raft)
            .is_some_and(|t| t.elapsed() <= self.answer_gap)
    }

    /// Records how a Raft call to peer `id` went: answered (`reached`), or failed in transport
    /// (a refused or broken connection). A call that timed out is not recorded.
    pub fn mark(&self, id: NodeId, reached: bool) {
        self.record(id, reached, true);
    }

    /// Records how a probe of peer `id` went, as [`Peers::mark`] does a Raft call's; it
    /// counts towards [`Peers::active_since`] only.
    pub fn mark_probe(&self, id: NodeId, reached: bool) {
        self.record(id, reached, false);
    }

    fn record(&self, id: NodeId, reached: bool, raft: bool) {
        let mut active = self.active.lock();
        if !reached {
            if let Some(a) = active.get_mut(&id) {
                a.since = None;
            }
            return;
        }
        let now = tokio::time::Instant::now();
        let a = active.entry(id).or_insert(Answers {
            since: None,
            heard: now,
            raft: None,
        });
        // After a failed call or a gap in the answers, the peer is active again from now.
        if a.since.is_none() || now.duration_since(a.heard) > self.answer_gap {
            a.since = Some(now);
        }
        a.heard = now;
        if raft {
            a.raft = Some(now);
        }
    }

    /// How often a member probes its peers: half the answer gap, so a peer that answers
    /// every probe never goes a gap without an answer.
    pub fn probe_interval(&self) -> Duration {
        self.answer_gap / 2
    }

    /// Whether `id` should be probed at a round of probes: nothing has been heard from it for
    /// half a probe interval, so a peer answered just after the last round is probed again
    /// (a leader's heartbeats keep its followers heard from, so it probes only those that
    /// are slow to answer, or all while it holds heartbeats for a transfer).
    pub fn needs_probe(&self, id: NodeId) -> bool {
        self.active
            .lock()
            .get(&id)
            .is_none_or(|a| a.heard.elapsed() >= self.probe_interval() / 2)
    }

    /// A gRPC client for the member's first peer URL.
    pub fn client(&self, member: &Member) -> Result<RaftPeerClient<Channel>, PeerError> {
        let url = member
            .peer_urls
            .first()
            .ok_or_else(|| PeerError::BadUrl(member.to_string()))?;
        self.client_for_url(url)
    }

    /// A gRPC client for a peer URL.
    pub fn client_for_url(&self, url: &str) -> Result<RaftPeerClient<Channel>, PeerError> {
        let mut channels = self.channels.lock();
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let mut ep = Endpoint::from_shared(url.to_string())
                    .map_err(|e| PeerError::BadUrl(format!("{url}: {e}")))?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5));
                if url.starts_with("https://") {
                    let tls = self.tls.clone().ok_or_else(|| {
                        PeerError::BadUrl(format!(
                            "{url}: an https:// peer needs --peer-cert-file and --peer-key-file"
                        ))
                    })?;
                    ep = ep
                        .tls_config(tls)
                        .map_err(|e| PeerError::BadUrl(format!("{url}: {e}")))?;
                }
                let c = ep.connect_lazy();
                channels.insert(url.to_string(), c.clone());
                c
            }
        };
        Ok(RaftPeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE))
    }
}

/// openraft's network factory.
#[derive(Clone, Debug, Default)]
pub struct Network {
    peers: Peers,
}

impl Network {
    /// A factory using `peers` for its channels.
    pub fn new(peers: Peers) -> Network {
        Network { peers }
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    client: Result<RaftPeerClient<Channel>, String>,
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection {
            target,
            client: self.peers.client(node).map_err(|e| e.to_string()),
            peers: self.peers.clone(),
        }
    }
}

/// Encodes a value for a [`RaftMessage`].
pub fn encode<T: Serialize>(v: &T) -> Result<RaftMessage, tonic::Status> {
    super::to_bincode(v)
        .map(|data| RaftMessage { data })
        .map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

/// Decodes a [`RaftMessage`].
pub fn decode<T: DeserializeOwned>(m: &RaftMessage) -> Result<T, tonic::Status> {
    bincode::deserialize(&m.data)
        .map_err(|e| tonic::Status::invalid_argument(format!("decode: {e}")))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone())))),
        };
        let mut client = client;
        let msg = encode(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&Msg(e.message().to_string()))))?;
        let mut request = tonic::Request::new(msg);
        request.set_timeout(timeout);
        let reply = match rpc {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| match s.code() {
            // A refused or broken connection is a break at once; a late answer (a slow fsync
            // past openraft's deadline) is not: the answer gap judges a peer gone quiet.
            tonic::Code::Unavailable => {
                self.peers.mark(self.target, false);
                RPCError::Unreachable(Unreachable::new(&Msg(s.message().to_string())))
            }
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&Msg(s.message().to_string())))
            }
            _ => RPCError::Network(NetworkError::new(&Msg(s.message().to_string()))),
        })?;
        self.peers.mark(self.target, true);
        let result: Result<Resp, E> = decode(reply.get_ref())
            .map_err(|e| RPCError::Network(NetworkError::new(&Msg(e.message().to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use super::Peers;
    use std::time::Duration;
    use tokio::time::{Instant, sleep};

    /// A peer probed at every round (each answer a little after the round) stays active
    /// from its first answer; a refused probe breaks that, the next answer starts it again;
    /// and probes never count as the Raft answers CheckQuorum looks at.
    #[tokio::test(start_paused = true)]
    async fn probes_keep_a_peer_active_without_counting_for_check_quorum() {
        let peers = Peers::new(None).with_answer_gap(Duration::from_millis(1000));
        let interval = peers.probe_interval();
        let answer = Duration::from_millis(3);
        let mut first = None;
        // Rounds every probe interval, each answered a little after it is sent.
        for _ in 0..20 {
            assert!(
                peers.needs_probe(2),
                "a peer heard from only by probes is probed"
            );
            sleep(answer).await;
            peers.mark_probe(2, true);
            let first = *first.get_or_insert_with(Instant::now);
            assert_eq!(peers.active_since(2), Some(first));
            assert!(!peers.answered_recently(2));
            sleep(interval - answer).await;
        }
        peers.mark_probe(2, false);
        assert_eq!(peers.active_since(2), None);
        sleep(interval).await;
        peers.mark_probe(2, true);
        assert_eq!(peers.active_since(2), Some(Instant::now()));

        // Raft answers every heartbeat: no probe is due, and CheckQuorum counts the peer.
        for _ in 0..10 {
            sleep(Duration::from_millis(100)).await;
            peers.mark(3, true);
            assert!(!peers.needs_probe(3));
        }
        assert!(peers.answered_recently(3));
    }
}
