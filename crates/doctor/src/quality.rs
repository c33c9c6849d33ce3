//! Grades of a relayed path, good / fair / poor / bad, by the field-notes thresholds. Defined here once: the
//! `/check` page's RTT grades (`web/check/check.js`) and docs/doctor.md are tested against these constants.
//!
//! What is graded is this client's link to the server, the part of every call that this network decides: delay and
//! jitter as a round trip client → server → client (two crossings of the link, what `/check`'s signaling ping
//! measures), loss per direction (one crossing, what media sent one way loses). The relay test cannot measure that
//! directly: both of its allocations sit behind this client, so a packet A → relay → B → relay → A crosses the
//! client's link [`RELAY_TEST_CROSSINGS`] times. [`Grades::of_relay_test`] scales the measurement down to the graded
//! crossings before grading — graded as measured, a link with 1 % loss each way would read as 4 % ("poor").

use serde::Serialize;

/// Good / fair / poor / bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Good,
    Fair,
    Poor,
    Bad,
}

/// Upper bounds (inclusive) of good, fair and poor; above `poor` is bad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub good: f64,
    pub fair: f64,
    pub poor: f64,
}

/// Field notes: RTT 100/250/400 ms, jitter 5/10/30 ms, loss 1/3/8 %.
pub const RTT_MS: Thresholds = Thresholds {
    good: 100.0,
    fair: 250.0,
    poor: 400.0,
};
pub const JITTER_MS: Thresholds = Thresholds {
    good: 5.0,
    fair: 10.0,
    poor: 30.0,
};
pub const LOSS_PERCENT: Thresholds = Thresholds {
    good: 1.0,
    fair: 3.0,
    poor: 8.0,
};

/// Crossings of the client's link by one relay-test packet: A up to the relay, down to B, B up, down to A.
pub const RELAY_TEST_CROSSINGS: u32 = 4;
/// Crossings in the round trip that [`RTT_MS`] and [`JITTER_MS`] describe: client → server → client.
pub const ROUND_TRIP_CROSSINGS: u32 = 2;

/// What the relay test measured, brought down to this client's link: the values that are graded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkEstimate {
    /// Round trip client ↔ server: the measured RTT × 2 / 4 (delay adds up per crossing).
    pub rtt_ms: f64,
    /// Jitter of that round trip, scaled like the RTT (assumes each crossing adds a like share).
    pub jitter_ms: f64,
    /// Loss of one crossing p, from the measured loss L = 1 − (1 − p)⁴ (a packet survives all four or is lost).
    pub loss_percent: f64,
}

impl LinkEstimate {
    /// From a relay test's RTT p50, jitter and loss (percent).
    pub fn of_relay_test(rtt_p50_ms: f64, jitter_ms: f64, loss_percent: f64) -> LinkEstimate {
        let share = f64::from(ROUND_TRIP_CROSSINGS) / f64::from(RELAY_TEST_CROSSINGS);
        let survived = (1.0 - loss_percent.clamp(0.0, 100.0) / 100.0).powf(1.0 / f64::from(RELAY_TEST_CROSSINGS));
        LinkEstimate {
            rtt_ms: rtt_p50_ms * share,
            jitter_ms: jitter_ms * share,
            loss_percent: 100.0 * (1.0 - survived),
        }
    }
}

impl Quality {
    pub fn grade(value: f64, thresholds: Thresholds) -> Quality {
        if value <= thresholds.good {
            Quality::Good
        } else if value <= thresholds.fair {
            Quality::Fair
        } else if value <= thresholds.poor {
            Quality::Poor
        } else {
            Quality::Bad
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Fair => "fair",
            Quality::Poor => "poor",
            Quality::Bad => "bad",
        }
    }
}

/// The grades of a relay round trip; `overall` is the worst of the three.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Grades {
    pub rtt: Quality,
    pub jitter: Quality,
    pub loss: Quality,
    pub overall: Quality,
}

impl Grades {
    pub fn of(rtt_p50_ms: f64, jitter_ms: f64, loss_percent: f64) -> Grades {
        let rtt = Quality::grade(rtt_p50_ms, RTT_MS);
        let jitter = Quality::grade(jitter_ms, JITTER_MS);
        let loss = Quality::grade(loss_percent, LOSS_PERCENT);
        Grades {
            rtt,
            jitter,
            loss,
            overall: rtt.max(jitter).max(loss),
        }
    }

    /// The grades of this client's link from a relay test's measurements (see [`LinkEstimate`]).
    pub fn of_relay_test(link: &LinkEstimate) -> Grades {
        Grades::of(link.rtt_ms, link.jitter_ms, link.loss_percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_thresholds() {
        assert_eq!(Quality::grade(100.0, RTT_MS), Quality::Good);
        assert_eq!(Quality::grade(100.1, RTT_MS), Quality::Fair);
        assert_eq!(Quality::grade(300.0, RTT_MS), Quality::Poor);
        assert_eq!(Quality::grade(401.0, RTT_MS), Quality::Bad);
        assert_eq!(Quality::grade(0.0, LOSS_PERCENT), Quality::Good);
        assert_eq!(Quality::grade(9.0, LOSS_PERCENT), Quality::Bad);
        assert_eq!(Quality::grade(7.0, JITTER_MS), Quality::Fair);
        assert_eq!(Grades::of(10.0, 1.0, 4.0).overall, Quality::Poor);
    }

    /// A link that loses 0.9 % each way and takes 40 ms per round trip: the relay test sees about 3.6 % loss and
    /// 80 ms, which graded as measured would be "poor"; for one crossing it is good.
    #[test]
    fn relay_test_is_graded_for_one_crossing() {
        let survive_one = 0.991_f64;
        let measured_loss = 100.0 * (1.0 - survive_one.powi(4));
        let link = LinkEstimate::of_relay_test(80.0, 4.0, measured_loss);
        assert!((link.loss_percent - 0.9).abs() < 1e-9, "{link:?}");
        assert!((link.rtt_ms - 40.0).abs() < 1e-9 && (link.jitter_ms - 2.0).abs() < 1e-9);
        assert_eq!(Grades::of(80.0, 4.0, measured_loss).overall, Quality::Poor);
        assert_eq!(Grades::of_relay_test(&link).overall, Quality::Good);
        // A relay round trip of 600 ms is a 300 ms link round trip: poor, not bad.
        assert_eq!(
            Grades::of_relay_test(&LinkEstimate::of_relay_test(600.0, 0.0, 0.0)).rtt,
            Quality::Poor
        );
        // Everything lost stays everything lost; nonsense stays in range.
        assert_eq!(LinkEstimate::of_relay_test(1.0, 0.0, 100.0).loss_percent, 100.0);
        assert_eq!(LinkEstimate::of_relay_test(1.0, 0.0, -5.0).loss_percent, 0.0);
    }

    fn repo_file(path: &str) -> String {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
    }

    fn bounds(t: Thresholds) -> [f64; 3] {
        [t.good, t.fair, t.poor]
    }

    /// The `/check` page grades round trips and loss with its own copies of the thresholds (it runs in a browser,
    /// from a static file): this test is what keeps the copies equal to `RTT_MS` and `LOSS_PERCENT`.
    #[test]
    fn check_page_uses_the_same_rtt_and_loss_thresholds() {
        let js = repo_file("web/check/check.js");
        for (name, thresholds) in [("RTT_LEVELS", RTT_MS), ("LOSS_LEVELS", LOSS_PERCENT)] {
            let decl = format!("const {name} = [");
            let start = js.find(&decl).unwrap_or_else(|| panic!("check.js declares {name}")) + decl.len();
            let list = js
                .get(start..)
                .and_then(|rest| rest.split(']').next())
                .unwrap_or_default();
            let levels: Vec<f64> = list
                .split(',')
                .map(|n| n.trim().parse().unwrap_or_else(|e| panic!("{name} entry {n:?}: {e}")))
                .collect();
            assert_eq!(
                levels,
                bounds(thresholds),
                "web/check/check.js {name} differs from the doctor's"
            );
            assert_eq!(js.matches(&decl).count(), 1);
        }
    }

    /// The `/check` page grades its relay loopback (two peer connections in one page, both behind this browser) for
    /// the same crossings: its constants must be these.
    #[test]
    fn check_page_grades_the_loopback_for_the_same_crossings() {
        let js = repo_file("web/check/check.js");
        for (name, value) in [
            ("RELAY_TEST_CROSSINGS", RELAY_TEST_CROSSINGS),
            ("ROUND_TRIP_CROSSINGS", ROUND_TRIP_CROSSINGS),
        ] {
            let decl = format!("const {name} = {value};");
            assert!(js.contains(&decl), "web/check/check.js should declare `{decl}`");
        }
    }

    /// docs/doctor.md states the thresholds in words.
    #[test]
    fn docs_state_the_same_thresholds() {
        let docs = repo_file("docs/doctor.md");
        let [r1, r2, r3] = bounds(RTT_MS);
        let [j1, j2, j3] = bounds(JITTER_MS);
        let [l1, l2, l3] = bounds(LOSS_PERCENT);
        let sentence =
            format!("RTT ≤ {r1} / {r2} / {r3} ms, jitter ≤ {j1} / {j2} / {j3} ms, loss ≤ {l1} / {l2} / {l3} %");
        assert!(docs.contains(&sentence), "docs/doctor.md should say: {sentence}");
    }
}
