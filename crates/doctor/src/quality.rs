//! Grades of a relayed path, good / fair / poor / bad, by the field-notes thresholds. Defined here once: the
//! `/check` page's RTT grades (`web/check/check.js`) and docs/doctor.md are tested against these constants.

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

    fn repo_file(path: &str) -> String {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
    }

    fn bounds(t: Thresholds) -> [f64; 3] {
        [t.good, t.fair, t.poor]
    }

    /// The `/check` page grades round trips with its own copy of the RTT thresholds (it runs in a browser, from a
    /// static file): this test is what keeps the copy equal to `RTT_MS`.
    #[test]
    fn check_page_uses_the_same_rtt_thresholds() {
        let js = repo_file("web/check/check.js");
        let decl = "const RTT_LEVELS = [";
        let start = js.find(decl).expect("check.js declares RTT_LEVELS") + decl.len();
        let list = js
            .get(start..)
            .and_then(|rest| rest.split(']').next())
            .unwrap_or_default();
        let levels: Vec<f64> = list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("RTT_LEVELS entry {n:?}: {e}"))
            })
            .collect();
        assert_eq!(
            levels,
            bounds(RTT_MS),
            "web/check/check.js RTT_LEVELS differs from quality::RTT_MS"
        );
        assert_eq!(js.matches(decl).count(), 1);
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
