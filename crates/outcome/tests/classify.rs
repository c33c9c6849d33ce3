//! The post-mortem's table of cases, one named test each: two reports (or one) in, the reason code and the
//! sentence's key words out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use outcome::{classify, classify_one, Absent, Diagnosis, Outcome, Path, Reason, Report};

/// A report from JSON fields written over a failed one that gathered host and srflx with STUN only.
fn report(fields: &str) -> Report {
    let mut base = serde_json::json!({
        "outcome": "failed", "elapsedMs": 12000, "gathered": {"host": 1, "srflx": 1}, "offered": {"stun": 1},
        "remoteCandidates": 2,
    });
    let over: serde_json::Value = serde_json::from_str(&format!("{{{fields}}}")).expect(fields);
    if let (Some(base), Some(over)) = (base.as_object_mut(), over.as_object()) {
        base.extend(over.clone());
    }
    Report::parse(&base.to_string()).unwrap_or_else(|e| panic!("{e}: {base}"))
}

fn check(d: &Diagnosis, reason: Reason, words: &[&str]) {
    assert_eq!(d.reason, reason, "{}", d.message);
    for w in words {
        assert!(d.message.contains(w), "{w:?} not in {:?}", d.message);
    }
    if reason != Reason::Connected {
        assert!(d.message.ends_with(reason.advice()), "{}", d.message);
    }
}

const TURN_OFFERED_UDP_ONLY: &str = r#""offered":{"stun":1,"turnUdp":1}"#;
const UDP_TIMEOUT: &str = r#""errors":[{"code":701,"url":"turn:turn.example.com:3478?transport=udp","text":"TURN allocate request timed out."}]"#;

#[test]
fn connected_directly_through_the_nats() {
    let a = report(
        r#""outcome":"connected","elapsedMs":640,
           "pair":{"local":{"type":"srflx","protocol":"udp"},"remote":{"type":"srflx","protocol":"udp"}}"#,
    );
    let b = report(
        r#""outcome":"connected","elapsedMs":700,
           "pair":{"local":{"type":"srflx","protocol":"udp"},"remote":{"type":"prflx","protocol":"udp"}}"#,
    );
    let d = classify(&a, Some(&b));
    assert_eq!(
        (d.outcome, d.path, d.time_to_connect_ms),
        (Outcome::Connected, Some(Path::DirectSrflx), Some(700))
    );
    check(&d, Reason::Connected, &["directly", "700 ms"]);
}

#[test]
fn connected_through_a_relay_takes_the_transport_from_the_side_that_allocated_it() {
    let a = report(
        r#""outcome":"connected","elapsedMs":900,
           "pair":{"local":{"type":"srflx","protocol":"udp"},"remote":{"type":"relay","protocol":"udp"}}"#,
    );
    let b = report(
        r#""outcome":"connected","elapsedMs":950,
           "pair":{"local":{"type":"relay","protocol":"udp","url":"turns:turn.example.com:443?transport=tcp"},
                   "remote":{"type":"srflx","protocol":"udp"}}"#,
    );
    assert_eq!(classify(&a, Some(&b)).path, Some(Path::RelayTls));
    assert_eq!(
        classify(&a, None).path,
        Some(Path::Relay),
        "A alone cannot know B's transport"
    );
    let host = report(
        r#""outcome":"connected","elapsedMs":30,
           "pair":{"local":{"type":"host","protocol":"udp"},"remote":{"type":"host","protocol":"udp"}}"#,
    );
    assert_eq!(classify(&host, None).path, Some(Path::DirectHost));
    assert_eq!(
        classify(&host, None).reason,
        Reason::Connected,
        "a connected pair needs no second report"
    );
}

#[test]
fn symmetric_nats_with_stun_only() {
    // As Chrome reported it from the NAT lab's sym-a and sym-b sites: a 701 on the STUN URL when the socket closed.
    let closed = r#""errors":[{"code":701,"url":"stun:203.0.113.10:3478","text":"UDP socket was closed."}]"#;
    let d = classify(&report(closed), Some(&report(closed)));
    assert_eq!(d.outcome, Outcome::Failed);
    check(
        &d,
        Reason::SymmetricNatNoRelay,
        &[
            "Both peers are behind NATs that change port per destination (symmetric)",
            "no TURN server was offered",
        ],
    );
}

#[test]
fn symmetric_nats_and_turn_over_udp_timed_out_without_tls_on_443() {
    let a = report(TURN_OFFERED_UDP_ONLY);
    let b = report(&format!("{TURN_OFFERED_UDP_ONLY},{UDP_TIMEOUT}"));
    let d = classify(&a, Some(&b));
    check(
        &d,
        Reason::TurnUdpBlockedNoTls,
        &[
            "Both peers are behind NATs that change port per destination (symmetric) and neither could allocate a \
           relay: peer B's TURN requests over UDP timed out and no TURN over TLS on 443 was offered",
        ],
    );
}

#[test]
fn udp_blocked_on_one_side_while_the_other_has_a_relay() {
    let blocked = format!(r#""gathered":{{"host":1}},{TURN_OFFERED_UDP_ONLY},{UDP_TIMEOUT}"#);
    let relayed = format!(r#""gathered":{{"host":1,"srflx":1,"relayUdp":1}},{TURN_OFFERED_UDP_ONLY}"#);
    let d = classify(&report(&relayed), Some(&report(&blocked)));
    check(
        &d,
        Reason::TurnUdpBlockedNoTls,
        &["Peer B could not allocate a relay: its TURN requests over UDP timed out and no TURN over TLS on 443"],
    );
}

/// What Chrome reported from the NAT lab's `noudp` site offered STUN and TURN over UDP only: no srflx, no relay, and
/// only the 701 every side gets on its STUN URL when the socket closes (the symmetric sites got it too).
#[test]
fn udp_blocked_seen_as_no_srflx_and_no_relay_although_stun_and_turn_over_udp_were_offered() {
    let noudp = r#""gathered":{"host":4},"offered":{"stun":1,"turnUdp":1},"remoteCandidates":6,
        "errors":[{"code":701,"url":"stun:203.0.113.10:3478","text":"UDP socket was closed."}]"#;
    let eim = r#""gathered":{"host":4,"srflx":1,"relayUdp":1},"offered":{"stun":1,"turnUdp":1},"remoteCandidates":4,
        "errors":[{"code":701,"url":"stun:203.0.113.10:3478","text":"UDP socket was closed."}]"#;
    let d = classify(&report(noudp), Some(&report(eim)));
    check(
        &d,
        Reason::TurnUdpBlockedNoTls,
        &["Peer A could not allocate a relay: its TURN requests over UDP timed out"],
    );
}

#[test]
fn turn_over_udp_timing_out_is_no_reason_when_tls_on_443_was_offered() {
    let offered = r#""offered":{"stun":1,"turnUdp":1,"turnTls":1,"turnTls443":1}"#;
    let tls_timeout = r#""errors":[{"code":701,"url":"turn:t.example:3478?transport=udp"},
                                   {"code":701,"url":"turns:t.example:443?transport=tcp"}]"#;
    let a = report(&format!("{offered},{tls_timeout}"));
    let d = classify(&a, Some(&report(offered)));
    check(
        &d,
        Reason::RelayNotGathered,
        &["peer A's TURN requests over UDP and TLS got no answer"],
    );
}

#[test]
fn turn_refused_the_credential_with_401() {
    let refused = r#""offered":{"stun":1,"turnUdp":1},"errors":[{"code":401,"url":"turn:t.example:3478?transport=udp","text":"Unauthorized"}]"#;
    let d = classify(&report(refused), Some(&report(refused)));
    check(
        &d,
        Reason::TurnAuthFailed,
        &["refused the credential of both peers (401)", "on either side"],
    );
}

#[test]
fn turn_refused_the_credential_reported_as_701_with_401_in_the_text() {
    let refused = r#""policy":"relay","gathered":{"host":0},"offered":{"turnUdp":1},
        "errors":[{"code":701,"url":"turn:t.example:3478?transport=udp","text":"Failed to authenticate with the server after challenge."}]"#;
    let ok = r#""offered":{"turnUdp":1},"gathered":{"host":1,"relayUdp":1}"#;
    let d = classify(&report(ok), Some(&report(refused)));
    check(&d, Reason::TurnAuthFailed, &["credential of peer B"]);
}

#[test]
fn relay_only_with_turn_unreachable() {
    let relay_only = r#""policy":"relay","gathered":{},"offered":{"turnUdp":1,"turnTcp":1},
        "remoteCandidates":0,"errors":[{"code":701,"url":"turn:127.0.0.1:9?transport=udp"},
                                       {"code":701,"url":"turn:127.0.0.1:9?transport=tcp"}]"#;
    let d = classify(&report(relay_only), Some(&report(relay_only)));
    check(
        &d,
        Reason::RelayOnlyUnreachable,
        &[
            "Both peers allow only relayed connections",
            "over UDP and TCP got no answer",
        ],
    );
}

#[test]
fn one_side_never_reported() {
    let d = classify(&report(""), None);
    assert_eq!(d.reports, 1);
    check(&d, Reason::PeerUnreported, &["Peer B never reported", "tab closed"]);
}

#[test]
fn signaling_never_completed() {
    let d = classify(
        &report(r#""remoteDescription":false,"remoteCandidates":0"#),
        Some(&report("")),
    );
    check(&d, Reason::SignalingIncomplete, &["peer A never applied"]);
}

#[test]
fn ice_failed_although_both_gathered_relays() {
    let relays = r#""gathered":{"host":1,"srflx":1,"relayUdp":1},"offered":{"stun":1,"turnUdp":1}"#;
    let d = classify(&report(relays), Some(&report(relays)));
    check(
        &d,
        Reason::RelayPortsBlocked,
        &["Both peers allocated a relay", "firewall"],
    );
}

#[test]
fn timeout_without_failure() {
    let relay = r#""outcome":"timeout","gathered":{"host":1,"relayUdp":1},"offered":{"turnUdp":1}"#;
    let none = r#""outcome":"timeout","gathered":{"host":1,"srflx":1},"offered":{"stun":1}"#;
    let d = classify(&report(relay), Some(&report(none)));
    assert_eq!(d.outcome, Outcome::Timeout);
    check(&d, Reason::Timeout, &["still checking"]);
    // With a relay on both sides a relayed pair would have connected long before the timeout: the relay's ports.
    let d = classify(&report(relay), Some(&report(relay)));
    assert_eq!(d.outcome, Outcome::Timeout);
    check(&d, Reason::RelayPortsBlocked, &["Both peers allocated a relay"]);
}

#[test]
fn signaling_incomplete_is_said_of_a_lone_report_and_of_both_sides_in_words() {
    let unsignaled = report(r#""remoteDescription":false,"remoteCandidates":0"#);
    check(
        &classify(&unsignaled, None),
        Reason::SignalingIncomplete,
        &["peer A never applied"],
    );
    check(
        &classify(&unsignaled, Some(&unsignaled)),
        Reason::SignalingIncomplete,
        &["neither peer applied the other's offer or answer"],
    );
}

#[test]
fn no_relay_although_turn_was_offered() {
    // TURN offered on one side, no relay anywhere, no error that explains it.
    let a = report(r#""gathered":{"host":1},"offered":{"turnUdp":1}"#);
    let b = report(r#""gathered":{"host":1},"offered":{}"#);
    check(
        &classify(&a, Some(&b)),
        Reason::RelayNotGathered,
        &["Neither peer could allocate a relay"],
    );
    // No TURN anywhere and no srflx on a side either: not a symmetric NAT but UDP (or STUN) blocked there.
    let c = report(r#""gathered":{"host":1},"offered":{"stun":1}"#);
    let mapped = report(r#""gathered":{"host":1,"srflx":1},"offered":{"stun":1}"#);
    check(
        &classify(&mapped, Some(&c)),
        Reason::NoTurnOffered,
        &["no TURN server was offered", "peer B got no public address over UDP"],
    );
    check(
        &classify(&c, Some(&c)),
        Reason::NoTurnOffered,
        &["both peers got no public address over UDP", "their network"],
    );
}

#[test]
fn unknown_when_one_side_had_a_relay_and_still_failed() {
    let a = report(r#""gathered":{"host":1,"relayTcp":1},"offered":{"turnTcp":1}"#);
    let d = classify(&a, Some(&report("")));
    check(&d, Reason::Unknown, &["do not explain"]);
}

#[test]
fn every_reason_has_a_distinct_kebab_case_code_a_summary_and_a_step() {
    let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    for c in &codes {
        assert!(c.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{c}");
    }
    for r in Reason::ALL {
        assert!(r.summary().ends_with('.'), "{r:?}");
        let _ = r.step().as_str();
    }
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), Reason::ALL.len());
}

/// docs/operations.md lists every reason with its code, step, sentence and advice, as the code has them.
#[test]
fn operations_md_lists_every_reason_as_the_code_words_it() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md"))
        .expect("docs/operations.md");
    let section = doc
        .split("## Connection outcomes and post-mortems")
        .nth(1)
        .expect("the section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    for r in Reason::ALL {
        let row = format!(
            "| `{}` | {} | {} | {} |",
            r.code(),
            r.step().as_str(),
            r.summary(),
            r.advice()
        );
        assert!(
            section.contains(&row),
            "missing or different in docs/operations.md:\n{row}"
        );
    }
}

// ---- calls that connected and then dropped ----

const RELAYED_PAIR: &str = r#""pair":{"local":{"type":"relay","protocol":"udp","relayProtocol":"udp",
    "url":"turn:turn.example.com:3478?transport=udp"},"remote":{"type":"relay","protocol":"udp"}}"#;
const DIRECT_PAIR: &str =
    r#""pair":{"local":{"type":"srflx","protocol":"udp"},"remote":{"type":"srflx","protocol":"udp"}}"#;

fn drop_report(fields: &str) -> Report {
    report(&format!(
        r#""outcome":"dropped","elapsedMs":95000,"connectedMs":60000,"brokenMs":30000,"restarts":3,{fields}"#
    ))
}

#[test]
fn a_drop_after_a_network_change_names_the_peer_whose_network_changed() {
    let a = drop_report(&format!(r#""cause":"ice-disconnected",{DIRECT_PAIR}"#));
    let b = drop_report(&format!(r#""cause":"network-change",{DIRECT_PAIR}"#));
    let d = classify(&a, Some(&b));
    assert_eq!(
        (d.outcome, d.path, d.connected_ms),
        (Outcome::Dropped, Some(Path::DirectSrflx), Some(60000))
    );
    assert!(d.dropped() && !d.failed());
    check(
        &d,
        Reason::NetworkChanged,
        &["peer B's network changed", "3 ICE restarts"],
    );
    let offline = drop_report(r#""cause":"ice-disconnected","offline":true"#);
    check(
        &classify(&offline, None),
        Reason::NetworkChanged,
        &["peer A's network went offline"],
    );
}

#[test]
fn a_relayed_drop_whose_restarts_got_no_turn_answer_is_the_relay_lost() {
    let a = drop_report(&format!(
        r#""cause":"ice-disconnected",{RELAYED_PAIR},"gathered":{{"host":1}},"offered":{{"turnUdp":1}},{UDP_TIMEOUT}"#
    ));
    let b = drop_report(&format!(r#""cause":"ice-disconnected",{RELAYED_PAIR}"#));
    let d = classify(&a, Some(&b));
    assert_eq!(d.path, Some(Path::RelayUdp));
    check(&d, Reason::RelayLost, &["stopped answering", "3 ICE restarts"]);
    // The server lost the session (it restarted): its relay went with it.
    let lost = drop_report(&format!(r#""cause":"session-lost",{RELAYED_PAIR}"#));
    check(
        &classify(&lost, None),
        Reason::RelayLost,
        &["went away with its server"],
    );
}

#[test]
fn a_direct_drop_with_nothing_else_to_say_is_the_path_lost() {
    let a = drop_report(&format!(r#""cause":"ice-disconnected",{DIRECT_PAIR}"#));
    let b = drop_report(&format!(r#""cause":"ice-failed",{DIRECT_PAIR},"restarts":0"#));
    check(
        &classify(&a, Some(&b)),
        Reason::PathLost,
        &["(direct)", "3 ICE restarts", "NAT or firewall"],
    );
    // A relayed path whose restarts still found relays: not the relay's fault by the reports.
    let r = drop_report(&format!(
        r#""cause":"ice-disconnected",{RELAYED_PAIR},"gathered":{{"relayUdp":1}},"offered":{{"turnUdp":1}}"#
    ));
    check(
        &classify(&r, None),
        Reason::PathLost,
        &["(through the relay)", "peer B did not report"],
    );
    let none = drop_report(&format!(r#""cause":"ice-failed",{DIRECT_PAIR},"restarts":0"#));
    check(
        &classify(&none, None),
        Reason::PathLost,
        &["no ICE restart could be made"],
    );
}

#[test]
fn a_drop_decided_on_one_report_says_what_the_server_knows_of_the_other_peer() {
    let a = drop_report(&format!(r#""cause":"ice-disconnected",{DIRECT_PAIR}"#));
    check(
        &classify_one(&a, Absent::Disconnected),
        Reason::PeerLost,
        &["peer B lost its network", "at the same time"],
    );
    check(
        &classify_one(&a, Absent::Lost),
        Reason::PeerLost,
        &["did not come back within the resume grace"],
    );
    check(
        &classify_one(&a, Absent::Left),
        Reason::PeerLeft,
        &["peer B left the room"],
    );
    assert_eq!(classify_one(&a, Absent::Present).reason, Reason::PathLost);
    // Not a drop: what the server knows of B does not change a failure to connect.
    let failed = report(r#""gathered":{"host":1}"#);
    assert_eq!(classify_one(&failed, Absent::Lost), classify(&failed, None));
}

#[test]
fn an_interruption_the_call_survived_says_what_broke_it_how_long_it_took_and_the_path_now() {
    let a = report(&format!(
        r#""outcome":"recovered","elapsedMs":70000,"connectedMs":60000,"brokenMs":2400,"restarts":1,
           "cause":"network-change",{RELAYED_PAIR}"#
    ));
    let d = classify(&a, None);
    assert_eq!(
        (d.outcome, d.path, d.recovery_ms),
        (Outcome::Recovered, Some(Path::RelayUdp), Some(2400))
    );
    assert!(!d.failed() && !d.dropped() && d.recovered());
    check(
        &d,
        Reason::Recovered,
        &[
            "when a network changed",
            "in 2400 ms after one ICE restart",
            "through the relay now",
        ],
    );
    // What the server knows of a silent other side does not turn it into a drop.
    assert_eq!(classify_one(&a, Absent::Disconnected).reason, Reason::Recovered);
}
