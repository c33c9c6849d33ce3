#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! Two nodes in simulated time: two routers, two in-memory hubs and a bus standing in for Redis (room claims,
//! session keys, pub/sub). Peers of one room on different nodes see each other and signal each other through the
//! room's home; a socket whose node is gone resumes through the other node with nothing lost or repeated.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cluster::{Action, Answer, Message, NodeId, Query, Router, HOSTED_BASE, MAX_WAITING_BYTES};
use rand::SeedableRng;
use serde_json::{json, Value};
use signal::{ConnId, Limits, MemoryHub, Now, Output, SessionEvent, SignalHub};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

struct Node {
    router: Router,
    hub: MemoryHub,
    inbox: HashMap<u64, Vec<Value>>,
    closed: HashMap<u64, u16>,
}

/// Redis as the routers see it.
#[derive(Default)]
struct Bus {
    rooms: HashMap<String, NodeId>,
    sessions: HashMap<String, Arc<str>>,
    channel: VecDeque<(NodeId, Bytes)>,
    down: Vec<NodeId>,
    /// Sockets (node, owner) whose envelopes the publish queue refuses, as one over its share would be.
    refused: Vec<(usize, ConnId)>,
}

struct Lab {
    nodes: Vec<Node>,
    bus: Bus,
    start: Instant,
}

fn id(i: usize) -> NodeId {
    NodeId::parse(&format!("n{i}")).unwrap()
}

impl Lab {
    fn new(n: usize, limits: Limits) -> Lab {
        let start = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                let ice: signal::IceServerSource =
                    Box::new(|_, _| serde_json::value::to_raw_value(&json!([])).unwrap());
                let rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                Node {
                    router: Router::new(id(i)).with_origin_limits(&limits),
                    hub: MemoryHub::new(limits.clone(), None, ice, rng, start).with_session_events(),
                    inbox: HashMap::new(),
                    closed: HashMap::new(),
                }
            })
            .collect();
        Lab {
            nodes,
            bus: Bus::default(),
            start,
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.start,
            unix: 1_800_000_000,
        }
    }

    fn connect(&mut self, node: usize, conn: u64) {
        let now = self.now();
        let n = &mut self.nodes[node];
        n.router.handle_connect(&mut n.hub, ConnId::new(conn), IP, now).unwrap();
        self.run();
    }

    fn send(&mut self, node: usize, conn: u64, v: Value) {
        let now = self.now();
        let n = &mut self.nodes[node];
        n.router
            .handle_text(&mut n.hub, ConnId::new(conn), Bytes::from(v.to_string()), now);
        self.run();
    }

    fn drop_socket(&mut self, node: usize, conn: u64) {
        let now = self.now();
        let n = &mut self.nodes[node];
        n.router.handle_closed(&mut n.hub, ConnId::new(conn), now);
        self.run();
    }

    /// Carries every action until nothing moves, as the I/O layer and Redis would.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(action) = self.nodes[i].router.poll_action() {
                    moved = true;
                    self.act(i, action);
                }
            }
            while let Some((to, bytes)) = self.bus.channel.pop_front() {
                moved = true;
                let i: usize = to.as_str()[1..].parse().unwrap();
                if self.bus.down.contains(&to) {
                    continue;
                }
                let now = self.now();
                let n = &mut self.nodes[i];
                n.router
                    .handle_message(&mut n.hub, Message::decode(&bytes).unwrap(), now);
            }
            if !moved {
                return;
            }
        }
    }

    fn act(&mut self, i: usize, action: Action) {
        let now = self.now();
        match action {
            Action::Local(Output::Send { conn, text }) => {
                let v: Value = serde_json::from_slice(&text).unwrap();
                self.nodes[i].inbox.entry(conn.get()).or_default().push(v);
            }
            Action::Local(Output::Close { conn, code, .. }) => {
                self.nodes[i].closed.insert(conn.get(), code.0);
            }
            Action::Local(_) => {}
            Action::Publish { owner: Some(owner), .. } if self.bus.refused.contains(&(i, owner)) => {
                let n = &mut self.nodes[i];
                n.router.handle_unpublished(&mut n.hub, owner, now);
            }
            Action::Publish { node, bytes, .. } => self.bus.channel.push_back((node, bytes)),
            Action::Announce(SessionEvent::Opened { secret, room, .. }) => {
                self.bus.sessions.insert(secret.as_str().to_owned(), room);
            }
            Action::Announce(SessionEvent::Ended { secret, .. }) => {
                self.bus.sessions.remove(secret.as_str());
            }
            Action::Announce(_) => {}
            Action::Lookup { conn, query } => {
                let room = match &query {
                    Query::Room(room) => Some(room.clone()),
                    Query::Session(secret) => self.bus.sessions.get(secret.as_str()).map(|r| r.to_string()),
                };
                let answer = match room {
                    None => Answer::Unknown,
                    Some(room) => {
                        let me = id(i);
                        let down = &self.bus.down;
                        let home = self.bus.rooms.entry(room).or_insert_with(|| me.clone());
                        if down.contains(home) {
                            *home = me;
                        }
                        Answer::Home(home.clone())
                    }
                };
                let n = &mut self.nodes[i];
                n.router.handle_lookup(&mut n.hub, conn, answer, now);
            }
        }
    }

    fn inbox(&mut self, node: usize, conn: u64) -> Vec<Value> {
        std::mem::take(self.nodes[node].inbox.entry(conn).or_default())
    }
}

#[test]
fn peers_on_two_nodes_see_and_signal_each_other_through_the_home() {
    let mut lab = Lab::new(2, Limits::default());
    lab.connect(0, 1);
    lab.send(0, 1, json!({"type":"join","room":"r"}));
    let joined_a = lab.inbox(0, 1);
    assert_eq!(joined_a[0]["type"], "joined");
    let a = joined_a[0]["peerId"].as_str().unwrap().to_owned();

    lab.connect(1, 1);
    lab.send(1, 1, json!({"type":"join","room":"r"}));
    let joined_b = lab.inbox(1, 1);
    assert_eq!(joined_b[0]["type"], "joined", "{joined_b:?}");
    assert_eq!(joined_b[0]["peers"][0]["id"], a, "B sees A, who is on the other node");
    let b = joined_b[0]["peerId"].as_str().unwrap().to_owned();
    let seen = lab.inbox(0, 1);
    assert_eq!(seen[0]["type"], "peer-joined");
    assert_eq!(seen[0]["peer"]["id"], b);

    lab.send(1, 1, json!({"type":"signal","to":a,"data":{"sdp":"offer"}}));
    let got = lab.inbox(0, 1);
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["from"].as_str()),
        (Some("signal"), Some(b.as_str()))
    );
    lab.send(0, 1, json!({"type":"signal","to":b,"data":{"sdp":"answer"}}));
    let got = lab.inbox(1, 1);
    assert_eq!(got[0]["data"]["sdp"], "answer");
    assert_eq!(got[0]["seq"], 2, "B's stream is numbered by the home: joined 1, this 2");
    assert_eq!(lab.nodes[0].router.hosted_rooms().collect::<Vec<_>>(), ["r"]);
    assert_eq!(lab.nodes[1].router.hosted_rooms().count(), 0);
}

#[test]
fn the_room_limit_holds_across_nodes() {
    let limits = Limits {
        max_peers_per_room: 2,
        ..Limits::default()
    };
    let mut lab = Lab::new(2, limits);
    for (node, conn) in [(0, 1), (1, 1), (1, 2)] {
        lab.connect(node, conn);
        lab.send(node, conn, json!({"type":"join","room":"r"}));
    }
    let third = lab.inbox(1, 2);
    assert_eq!(third[0]["code"], "room-full", "{third:?}");
    assert_eq!(lab.nodes[1].closed.get(&2), Some(&4102));
}

/// A join refused without a close (its meta too large) leaves the socket open; its next join must be looked up
/// like a first one, or it would make a private copy of a room that lives on another node.
#[test]
fn a_join_after_a_refused_join_is_looked_up_again() {
    let mut lab = Lab::new(2, Limits::default());
    lab.connect(0, 1);
    lab.send(0, 1, json!({"type":"join","room":"r"}));
    let a = lab.inbox(0, 1)[0]["peerId"].as_str().unwrap().to_owned();

    lab.connect(1, 1);
    let big = "x".repeat(4000);
    lab.send(1, 1, json!({"type":"join","room":"s","meta":{"name":big}}));
    let refused = lab.inbox(1, 1);
    assert_eq!(refused[0]["type"], "error", "{refused:?}");
    assert_eq!(lab.nodes[1].closed.get(&1), None, "the socket stays open");
    lab.send(1, 1, json!({"type":"join","room":"r"}));
    let joined = lab.inbox(1, 1);
    assert_eq!(joined[0]["type"], "joined", "{joined:?}");
    assert_eq!(joined[0]["peers"][0]["id"], a, "B is in the room on its home, with A");
    assert_eq!(
        lab.nodes[1].router.hosted_rooms().count(),
        0,
        "no copy of the room on B's node"
    );
}

#[test]
fn a_socket_of_a_dead_node_resumes_through_another_with_nothing_lost() {
    let mut lab = Lab::new(3, Limits::default());
    lab.connect(0, 1);
    lab.send(0, 1, json!({"type":"join","room":"r"}));
    let a = lab.inbox(0, 1)[0]["peerId"].as_str().unwrap().to_owned();
    lab.connect(1, 1);
    lab.send(1, 1, json!({"type":"join","room":"r"}));
    let joined = lab.inbox(1, 1);
    let session = joined[0]["session"].as_str().unwrap().to_owned();
    lab.inbox(0, 1);
    for i in 0..3 {
        lab.send(0, 1, json!({"type":"signal","to":joined[0]["peerId"],"data":{"n":i}}));
    }
    let seen: Vec<u64> = lab.inbox(1, 1).iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seen, [2, 3, 4]);

    // Node 1 dies (its socket with it); the home notices only later. Meanwhile A keeps signalling.
    lab.bus.down.push(id(1));
    for i in 3..5 {
        lab.send(0, 1, json!({"type":"signal","to":joined[0]["peerId"],"data":{"n":i}}));
    }
    let now = lab.now();
    let n = &mut lab.nodes[0];
    n.router.handle_node_gone(&mut n.hub, &id(1), now);
    lab.run();

    // The client reconnects to node 2 and resumes from what it saw.
    lab.connect(2, 9);
    lab.send(2, 9, json!({"type":"resume","session":session,"lastSeq":4}));
    let got = lab.inbox(2, 9);
    assert_eq!(got[0]["type"], "resumed", "{got:?}");
    let replayed: Vec<(u64, u64)> = got[1..]
        .iter()
        .map(|v| (v["seq"].as_u64().unwrap(), v["data"]["n"].as_u64().unwrap()))
        .collect();
    assert_eq!(replayed, [(5, 3), (6, 4)]);
    lab.send(2, 9, json!({"type":"signal","to":a,"data":{"back":true}}));
    assert_eq!(lab.inbox(0, 1)[0]["data"]["back"], true);
}

#[test]
fn a_resume_of_an_unknown_session_fails_on_the_node_it_reaches() {
    let mut lab = Lab::new(2, Limits::default());
    lab.connect(1, 1);
    lab.send(
        1,
        1,
        json!({"type":"resume","session":format!("s_{}", "0".repeat(32)),"lastSeq":0}),
    );
    let got = lab.inbox(1, 1);
    assert_eq!(got[0]["code"], "resume-failed");
    assert_eq!(lab.nodes[1].closed.get(&1), Some(&4201));
}

#[test]
fn a_resume_of_a_session_of_this_node_needs_no_lookup() {
    let mut lab = Lab::new(2, Limits::default());
    lab.connect(0, 1);
    lab.send(0, 1, json!({"type":"join","room":"r"}));
    let session = lab.inbox(0, 1)[0]["session"].as_str().unwrap().to_owned();
    lab.drop_socket(0, 1);
    // Redis lost the room while it was away and another node claimed it: this node still serves its own session.
    lab.bus.rooms.insert("r".into(), id(1));
    lab.connect(0, 2);
    lab.send(0, 2, json!({"type":"resume","session":session,"lastSeq":1}));
    assert_eq!(lab.inbox(0, 2)[0]["type"], "resumed");
}

#[test]
fn a_draining_node_closes_every_socket_with_4202_and_sends_newcomers_back() {
    let mut lab = Lab::new(2, Limits::default());
    lab.connect(0, 1);
    lab.send(0, 1, json!({"type":"join","room":"r"}));
    lab.connect(1, 1);
    lab.send(1, 1, json!({"type":"join","room":"r"}));
    // Node 1 also has a socket forwarded to node 0... and node 0 hosts node 1's socket.
    let n = &mut lab.nodes[0];
    n.router.handle_drain(&mut n.hub);
    lab.run();
    assert_eq!(lab.nodes[0].closed.get(&1), Some(&4202), "its own socket");
    assert_eq!(
        lab.nodes[1].closed.get(&1),
        Some(&4202),
        "the socket it hosted for node 1"
    );
    // A socket node 1 forwards now (its lookup still named node 0) is sent back at once.
    lab.connect(1, 2);
    lab.send(1, 2, json!({"type":"join","room":"r"}));
    assert_eq!(lab.nodes[1].closed.get(&2), Some(&4202));
    assert!(lab.nodes[0].router.is_draining());
}

#[test]
fn a_lost_link_closes_the_sockets_that_depend_on_another_node() {
    let mut lab = Lab::new(2, Limits::default());
    lab.connect(0, 1);
    lab.send(0, 1, json!({"type":"join","room":"r"}));
    lab.connect(1, 1);
    lab.send(1, 1, json!({"type":"join","room":"r"}));
    lab.connect(1, 2);
    lab.send(1, 2, json!({"type":"join","room":"mine"}));
    let now = lab.now();
    let n = &mut lab.nodes[1];
    n.router.handle_link_lost(&mut n.hub, now);
    lab.run();
    assert_eq!(lab.nodes[1].closed.get(&1), Some(&4202), "forwarded to node 0");
    assert_eq!(lab.nodes[1].closed.get(&2), None, "its room is on this node");
}

/// A socket whose envelopes the queue to Redis refuses (over its share) is closed alone with 4202, at its node
/// and at its room's home; the other sockets of both nodes go on signaling through the home.
#[test]
fn a_socket_over_its_share_of_the_publish_queue_is_closed_alone() {
    let mut lab = Lab::new(2, Limits::default());
    lab.connect(0, 1);
    lab.send(0, 1, json!({"type":"join","room":"r"}));
    let a = lab.inbox(0, 1)[0]["peerId"].as_str().unwrap().to_owned();
    for conn in [1, 2, 3] {
        lab.connect(1, conn);
        lab.send(1, conn, json!({"type":"join","room":"r"}));
    }
    let joined: Vec<String> = [1, 2, 3]
        .map(|conn| lab.inbox(1, conn)[0]["peerId"].as_str().unwrap().to_owned())
        .into();
    lab.inbox(0, 1);

    // A socket of node 1, forwarded to the home (node 0): its own frame cannot be queued.
    lab.bus.refused.push((1, ConnId::new(1)));
    lab.send(1, 1, json!({"type":"signal","to":a,"data":{"n":1}}));
    assert_eq!(
        lab.nodes[1].closed.get(&1),
        Some(&4202),
        "the socket over its share resumes"
    );
    assert!(
        lab.inbox(0, 1).iter().all(|m| m["type"] != "signal"),
        "its frame was not delivered"
    );
    // The home was told: its hosted socket is gone (the session waits for a resume).
    assert_eq!(
        lab.nodes[0].hub.stats().connections,
        3,
        "A and the two others of node 1"
    );

    // A socket hosted at the home for node 1: what the home sends it cannot be queued.
    // The home numbers the sockets it hosts from HOSTED_BASE, in the order they came: node 1's second is + 1.
    let hosted = ConnId::new(HOSTED_BASE + 1);
    lab.bus.refused.push((0, hosted));
    lab.send(0, 1, json!({"type":"signal","to":joined[1],"data":{"n":2}}));
    assert_eq!(
        lab.nodes[1].closed.get(&2),
        Some(&4202),
        "closed at its node, told by the home"
    );
    assert!(lab.inbox(1, 2).is_empty());
    assert_eq!(lab.nodes[0].hub.stats().connections, 2);

    // The others go on, both ways.
    lab.send(0, 1, json!({"type":"signal","to":joined[2],"data":{"n":3}}));
    assert_eq!(lab.inbox(1, 3)[0]["data"]["n"], 3);
    lab.send(1, 3, json!({"type":"signal","to":a,"data":{"n":4}}));
    assert_eq!(lab.inbox(0, 1)[0]["data"]["n"], 4);
    assert_eq!(lab.nodes[1].closed.get(&3), None);
    assert_eq!(lab.nodes[0].closed.get(&1), None);
}

/// What `web::cluster` does to move a socket to its room's hub shard: the router lets go of it while it is fresh,
/// the hub hands over its state (error count, token bucket), and the other side takes both in.
#[test]
fn a_socket_that_has_not_joined_moves_to_another_router_with_its_hub_state() {
    let limits = Limits {
        max_errors: 1,
        ..Limits::default()
    };
    let mut lab = Lab::new(2, limits);
    let now = lab.now();
    for conn in [1, 2] {
        lab.connect(0, conn);
        lab.send(0, conn, json!({"type":"nonsense"}));
        assert_eq!(lab.inbox(0, conn)[0]["type"], "error");
        let conn = ConnId::new(conn);
        let n0 = &mut lab.nodes[0];
        let ip = n0.router.take_fresh(conn).expect("a fresh socket is let go of");
        let socket = n0.hub.take_unjoined(conn).expect("and its hub hands it over");
        let n1 = &mut lab.nodes[1];
        n1.hub.adopt(conn, socket, now);
        n1.router.adopt_fresh(conn, ip);
    }

    // Its error count came along: the second error closes it.
    lab.send(1, 1, json!({"type":"nonsense"}));
    assert!(lab.nodes[1].closed.contains_key(&1), "{:?}", lab.nodes[1].closed);
    assert!(!lab.nodes[0].closed.contains_key(&1));

    // The other joins where it now is, which claims the room for that node.
    lab.send(1, 2, json!({"type":"join","room":"r"}));
    assert_eq!(lab.inbox(1, 2)[0]["type"], "joined");
    assert_eq!(lab.nodes[1].router.hosted_rooms().collect::<Vec<_>>(), ["r"]);
    assert_eq!(lab.nodes[0].hub.stats().connections, 0);
    // Routed now: it stays.
    assert_eq!(lab.nodes[1].router.take_fresh(ConnId::new(2)), None);
    assert_eq!(lab.nodes[1].hub.stats().connections, 1);
}

/// Every action a router has queued.
fn actions(router: &mut Router) -> Vec<Action> {
    std::iter::from_fn(|| router.poll_action()).collect()
}

fn closed_with(actions: &[Action], code: u16) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Local(Output::Close { code: c, .. }) if c.0 == code))
}

/// A socket forwarded to its room's home floods it faster than the round trip: its node stops publishing its
/// frames at twice the hub's rate and burst and closes it with 4100 (before, every frame became a `PUBLISH`).
#[test]
fn a_forwarded_socket_s_flood_is_cut_at_its_node() {
    let limits = Limits::default();
    let mut lab = Lab::new(2, limits.clone());
    lab.connect(0, 1);
    lab.send(0, 1, json!({"type":"join","room":"r"}));
    let a = lab.inbox(0, 1)[0]["peerId"].as_str().unwrap().to_owned();
    lab.connect(1, 1);
    lab.send(1, 1, json!({"type":"join","room":"r"}));
    assert_eq!(lab.inbox(1, 1)[0]["type"], "joined");

    let now = lab.now();
    let n = &mut lab.nodes[1];
    let signal = Bytes::from(json!({"type":"signal","to":a,"data":{"n":1}}).to_string());
    for _ in 0..1000 {
        n.router.handle_text(&mut n.hub, ConnId::new(1), signal.clone(), now);
    }
    let actions = actions(&mut n.router);
    let published = actions.iter().filter(|a| matches!(a, Action::Publish { .. })).count();
    let ceiling = 2 * limits.burst as usize;
    assert!(closed_with(&actions, 4100), "not closed: {published} frames published");
    assert_eq!(
        published,
        ceiling + 1,
        "the burst's frames, then the socket's close for the home"
    );
}

/// While its room is looked up, a socket's frames wait unread by any hub: at most 128 KiB of them, then it is closed
/// with 4100 (before: 32 frames of any size, 2 MiB, then 4202, which invites a reconnect).
#[test]
fn frames_held_during_a_room_lookup_are_bounded_in_bytes() {
    let mut lab = Lab::new(2, Limits::default());
    lab.connect(1, 1);
    let now = lab.now();
    let n = &mut lab.nodes[1];
    let join = Bytes::from(json!({"type":"join","room":"far"}).to_string());
    n.router.handle_text(&mut n.hub, ConnId::new(1), join, now);
    assert!(matches!(n.router.poll_action(), Some(Action::Lookup { .. })));
    let big = Bytes::from(json!({"type":"broadcast","data":"x".repeat(60_000)}).to_string());
    let mut held = 0;
    for _ in 0..10 {
        n.router.handle_text(&mut n.hub, ConnId::new(1), big.clone(), now);
        if closed_with(&actions(&mut n.router), 4100) {
            break;
        }
        held += big.len();
    }
    assert!(
        held > 0 && held <= MAX_WAITING_BYTES,
        "{held} bytes held before the close"
    );
    assert_eq!(
        held / big.len(),
        2,
        "two 60 KB frames fit in 128 KiB, the third does not"
    );
}

/// A session as the journal of a dead home recorded it: joined (frame 1) and nothing since.
fn recorded(secret: &str, peer: &str) -> signal::Restored {
    signal::Restored {
        secret: signal::SessionSecret::parse(secret).unwrap(),
        room: "r".into(),
        peer: signal::PeerId::parse(peer).unwrap(),
        meta: "{}".into(),
        ip: IP,
        next_seq: 2,
        client_seq: 0,
        frames: Vec::new(),
    }
}

/// The room's sessions come back with a takeover even when the socket whose lookup took it over has closed in the
/// meantime (a page closed mid-lookup): the room's key names this node, and every other member resumes here.
/// Before, they were dropped with that socket, and every member's resume failed.
#[test]
fn a_takeover_restores_the_room_s_sessions_even_when_the_asking_socket_has_closed() {
    let mut lab = Lab::new(1, Limits::default());
    let now = lab.now();
    let (first, second) = (format!("s_{}", "1".repeat(32)), format!("s_{}", "2".repeat(32)));
    let n = &mut lab.nodes[0];
    n.router.handle_connect(&mut n.hub, ConnId::new(1), IP, now).unwrap();
    let resume = json!({"type":"resume","session":first,"lastSeq":1}).to_string();
    n.router
        .handle_text(&mut n.hub, ConnId::new(1), Bytes::from(resume), now);
    assert!(actions(&mut n.router)
        .iter()
        .any(|a| matches!(a, Action::Lookup { .. })));
    n.router.handle_closed(&mut n.hub, ConnId::new(1), now);
    let taken = vec![
        recorded(&first, &format!("p_{}", "a".repeat(16))),
        recorded(&second, &format!("p_{}", "b".repeat(16))),
    ];
    n.router
        .handle_lookup(&mut n.hub, ConnId::new(1), Answer::TakenOver(taken), now);
    lab.run();
    // The other member resumes here, with no lookup: this node holds its session.
    lab.connect(0, 2);
    lab.send(0, 2, json!({"type":"resume","session":second,"lastSeq":1}));
    let got = lab.inbox(0, 2);
    assert_eq!(
        got.first().map(|v| v["type"].clone()),
        Some(json!("resumed")),
        "{got:?}"
    );
}

/// A resume whose lookup has no answer yet (the room still being restored, or Redis slow for a moment while it
/// answered) is closed with 4202 to try again: its session may live on at its home. Before, this node's hub, which
/// does not hold it, answered `resume-failed` (4201), and the client joined again as a new peer. With Redis down
/// (`Failed`), sockets are served here alone, as before.
#[test]
fn a_resume_whose_lookup_has_no_answer_yet_is_sent_to_try_again() {
    let mut lab = Lab::new(1, Limits::default());
    let now = lab.now();
    let n = &mut lab.nodes[0];
    let open = |n: &mut Node, conn: u64, frame: Value| {
        n.router.handle_connect(&mut n.hub, ConnId::new(conn), IP, now).unwrap();
        let text = Bytes::from(frame.to_string());
        n.router.handle_text(&mut n.hub, ConnId::new(conn), text, now);
        let asked = actions(&mut n.router);
        assert!(asked.iter().any(|a| matches!(a, Action::Lookup { .. })), "{asked:?}");
    };
    let resume = |digit: &str| json!({"type":"resume","session":format!("s_{}", digit.repeat(32)),"lastSeq":4});
    open(n, 1, resume("3"));
    n.router.handle_lookup(&mut n.hub, ConnId::new(1), Answer::Retry, now);
    let done = actions(&mut n.router);
    assert!(closed_with(&done, 4202), "{done:?}");
    let told = done.iter().any(|a| matches!(a, Action::Local(Output::Send { .. })));
    assert!(!told, "no resume-failed: {done:?}");

    // With Redis down, a join is served here alone, and a resume of a session this node does not hold fails.
    open(n, 2, json!({"type":"join","room":"r"}));
    n.router.handle_lookup(&mut n.hub, ConnId::new(2), Answer::Failed, now);
    let joined = actions(&mut n.router);
    assert!(
        joined.iter().any(|a| matches!(a, Action::Local(Output::Send { .. }))),
        "{joined:?}"
    );
    open(n, 3, resume("4"));
    n.router.handle_lookup(&mut n.hub, ConnId::new(3), Answer::Failed, now);
    assert!(closed_with(&actions(&mut n.router), 4201), "resume-failed");
}

/// A home told it lost a room (another node took it over while this one was cut off) closes every socket of the room
/// with 4202 — its own and the ones it hosted for other nodes — forgets the room's sessions without ending their
/// records (they are the new home's), and keeps its other rooms.
#[test]
fn a_home_that_lost_its_room_closes_its_sockets_to_resume_at_the_new_home() {
    let mut lab = Lab::new(2, Limits::default());
    lab.connect(0, 1);
    lab.send(0, 1, json!({"type":"join","room":"r"}));
    let a_session = lab.inbox(0, 1)[0]["session"].as_str().unwrap().to_owned();
    lab.connect(1, 1);
    lab.send(1, 1, json!({"type":"join","room":"r"}));
    let b_session = lab.inbox(1, 1)[0]["session"].as_str().unwrap().to_owned();
    lab.connect(0, 2);
    lab.send(0, 2, json!({"type":"join","room":"kept"}));
    lab.inbox(0, 1);
    assert_eq!(lab.nodes[0].router.hosted_sessions().count(), 3);

    let n = &mut lab.nodes[0];
    n.router.handle_room_lost(&mut n.hub, "r");
    lab.run();
    assert_eq!(lab.nodes[0].closed.get(&1), Some(&4202), "the home's own socket");
    assert_eq!(
        lab.nodes[1].closed.get(&1),
        Some(&4202),
        "the socket it hosted for node 1"
    );
    assert_eq!(lab.nodes[0].closed.get(&2), None, "another room's socket");
    assert!(lab.inbox(0, 1).is_empty(), "nobody is told anyone left");
    assert_eq!(lab.nodes[0].router.hosted_rooms().collect::<Vec<_>>(), ["kept"]);
    assert_eq!(lab.nodes[0].router.hosted_sessions().count(), 1);
    for secret in [&a_session, &b_session] {
        assert!(
            lab.bus.sessions.contains_key(secret.as_str()),
            "the records stay for the new home"
        );
    }
}
