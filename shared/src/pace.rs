//! Pacing EC2 calls below the account's request-rate limits.
//!
//! EC2 throttles per account and region with token buckets: a bucket per category of action
//! (mutating, non-mutating) and, for some actions, a bucket of their own (the table in
//! <https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html>). A tool that
//! drains a bucket throttles everything else in the account with it: the deploys and the
//! autoscaling that share it. [`Pacer`] keeps a local bucket per (region, EC2 bucket) with a
//! share ([`Pacer::new`]'s `percent`) of the documented burst and refill, and makes each call
//! wait for a token; a call whose token would only come after the deadline is not made (the
//! next schedule continues). The SDK's adaptive retry stays underneath for what pacing cannot
//! see (the account's other workloads).
//!
//! **The burst is half the share** ([`BURST_SHARE`]): the pacer sends at most half of its share
//! of a bucket's burst at once, so that the account's bucket keeps the other half as a reserve.
//! Paced at the full refill rate, a bucket otherwise hovers at zero tokens, and any difference
//! between when this process releases a call and when EC2 counts it (network jitter), or a
//! call the pacer does not see (the SDK's retries, unpaced listings), is a throttle; each
//! throttle also slows every later call through the adaptive retry's client-side limiter. At
//! `API_BUDGET_PERCENT=100` over 10,000 removals (the rate-limited emulator), the full burst
//! gave 82 throttles and 78 % of the budget; the reserve costs one burst's worth of seconds
//! once (half the burst at the refill rate: 10 s for DeregisterImage).

use crate::deadline::{Deadline, SAFETY_MARGIN};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::time::{Duration, Instant};

/// A documented bucket: its capacity (burst) and refill rate per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Tokens the bucket holds when full.
    pub burst: f64,
    /// Tokens added per second.
    pub refill: f64,
}

/// The EC2 bucket an action draws from and its documented limit (the throttling page's table,
/// read 2026-11: "Mutating actions" 50 / 5, "Non-mutating actions" 100 / 20, and the actions
/// with a bucket of their own that cleanup and publish call).
pub fn documented(action: &str) -> (&'static str, Limit) {
    let own = |burst, refill| Limit { burst, refill };
    match action {
        "DeregisterImage" => ("DeregisterImage", own(100.0, 5.0)),
        "DeleteSnapshot" => ("DeleteSnapshot", own(100.0, 5.0)),
        "CreateTags" => ("CreateTags", own(100.0, 10.0)),
        "DeleteTags" => ("DeleteTags", own(100.0, 10.0)),
        "CopyImage" => ("CopyImage", own(100.0, 1.0)),
        "ModifyImageAttribute" => ("ModifyImageAttribute", own(100.0, 5.0)),
        "ModifySnapshotAttribute" => ("ModifySnapshotAttribute", own(100.0, 5.0)),
        a if ["Describe", "List", "Get"].iter().any(|p| a.starts_with(p)) => {
            ("non-mutating", own(100.0, 20.0))
        }
        _ => ("mutating", own(50.0, 5.0)),
    }
}

/// The share of its burst the pacer spends at once; the rest stays in the account's bucket as
/// a reserve (module doc).
pub const BURST_SHARE: f64 = 0.5;

/// Most `percent` accepted (accounts with raised limits may use more than the default table).
pub const MAX_PERCENT: u32 = 1000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    limit: Limit,
}

/// Local token buckets, a share of EC2's. `percent = 0` turns pacing off (only the SDK's
/// adaptive retry then guards the account's buckets).
#[derive(Debug)]
pub struct Pacer {
    percent: u32,
    buckets: Mutex<HashMap<(String, &'static str), Bucket>>,
}

impl Pacer {
    /// A pacer using `percent` of each documented refill and [`BURST_SHARE`] of that share of
    /// its burst (at least one token of burst).
    pub fn new(percent: u32) -> Self {
        Pacer {
            percent: percent.min(MAX_PERCENT),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The share of the documented limit this pacer uses for `action`, or `None` when off.
    pub fn limit(&self, action: &str) -> Option<Limit> {
        if self.percent == 0 {
            return None;
        }
        let share = f64::from(self.percent) / 100.0;
        let (_, l) = documented(action);
        Some(Limit {
            burst: (l.burst * share * BURST_SHARE).max(1.0),
            refill: l.refill * share,
        })
    }

    /// Waits for a token of `action`'s bucket in `region`. Returns `false`, without waiting
    /// and without taking a token, when the token would come after `deadline`'s safety margin:
    /// the caller defers the call to the next run.
    pub async fn acquire(&self, region: &str, action: &str, deadline: &Deadline) -> bool {
        match self.reserve(region, action, Instant::now(), deadline.remaining()) {
            Grant::Unpaced => deadline.may_start(),
            Grant::TooLate => false,
            Grant::Wait(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                true
            }
        }
    }

    /// The bucket arithmetic of [`Pacer::acquire`] at `now`, with `left` until the deadline:
    /// takes the token (a reservation, when it is still to come) and says how long to wait for
    /// it, or takes nothing when it would come within the deadline's safety margin. The clock
    /// is a parameter so that the arithmetic is tested on exact instants.
    fn reserve(&self, region: &str, action: &str, now: Instant, left: Duration) -> Grant {
        let Some(limit) = self.limit(action) else {
            return Grant::Unpaced;
        };
        let Ok(mut buckets) = self.buckets.lock() else {
            return Grant::Unpaced;
        };
        let key = (region.to_owned(), documented(action).0);
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
            limit,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * b.limit.refill).min(b.limit.burst);
        b.at = now;
        // Tokens below zero are reservations of callers already waiting.
        let wait = if b.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - b.tokens) / b.limit.refill.max(f64::MIN_POSITIVE))
        };
        if left <= wait + SAFETY_MARGIN {
            return Grant::TooLate;
        }
        b.tokens -= 1.0;
        Grant::Wait(wait)
    }
}

/// What [`Pacer::reserve`] decided for one call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Grant {
    /// The token is taken; the call may go after this long.
    Wait(Duration),
    /// The token would come within the deadline's safety margin: nothing was taken.
    TooLate,
    /// Pacing is off for this call (percent 0, or the buckets are unusable after a panic).
    Unpaced,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_draw_from_their_documented_bucket() {
        assert_eq!(documented("DeregisterImage").0, "DeregisterImage");
        assert_eq!(documented("EnableImageDeprecation").0, "mutating");
        assert_eq!(documented("DisableImageDeprecation").0, "mutating");
        assert_eq!(documented("DescribeImageAttribute").0, "non-mutating");
        assert_eq!(documented("DescribeImageReferences").1.refill, 20.0);
    }

    #[test]
    fn the_share_scales_burst_and_refill_and_zero_is_off() {
        let p = Pacer::new(50);
        assert_eq!(
            p.limit("DeregisterImage"),
            Some(Limit {
                burst: 25.0,
                refill: 2.5
            })
        );
        // At 100 %: the full refill, half the burst (the other half stays in reserve).
        assert_eq!(
            Pacer::new(100).limit("DeregisterImage"),
            Some(Limit {
                burst: 50.0,
                refill: 5.0
            })
        );
        assert_eq!(Pacer::new(0).limit("DeregisterImage"), None);
        // At least one token of burst, however small the share.
        assert_eq!(Pacer::new(1).limit("mutating").map(|l| l.burst), Some(1.0));
    }

    const DAY: Duration = Duration::from_secs(86_400);

    /// The wait of a granted token (the test fails on any other grant).
    fn waited(grant: Grant) -> Duration {
        match grant {
            Grant::Wait(d) => d,
            other => panic!("expected a token, got {other:?}"),
        }
    }

    #[test]
    fn calls_beyond_the_burst_wait_for_the_refill_rate() {
        let p = Pacer::new(20); // DeregisterImage: burst 10 (half of 20), 1 per second.
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(
                p.reserve("r", "DeregisterImage", t0, DAY),
                Grant::Wait(Duration::ZERO)
            );
        }
        // A caller that waits for each token before asking for the next: 1 s apart.
        let mut t = t0;
        for _ in 0..4 {
            t += waited(p.reserve("r", "DeregisterImage", t, DAY));
        }
        assert_eq!(t - t0, Duration::from_secs(4));
        // Another region has its own bucket, and so has another EC2 bucket.
        assert_eq!(
            p.reserve("s", "DeregisterImage", t, DAY),
            Grant::Wait(Duration::ZERO)
        );
        assert_eq!(
            p.reserve("r", "DeleteSnapshot", t, DAY),
            Grant::Wait(Duration::ZERO)
        );
    }

    #[test]
    fn callers_at_the_same_instant_reserve_successive_tokens() {
        let p = Pacer::new(20); // DeregisterImage: burst 10, 1 per second.
        let t0 = Instant::now();
        for _ in 0..10 {
            waited(p.reserve("r", "DeregisterImage", t0, DAY));
        }
        let waits: Vec<u64> = (0..3)
            .map(|_| waited(p.reserve("r", "DeregisterImage", t0, DAY)).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 3]);
        // The refill pays the reservations first: 3 s later the next caller still waits 1 s.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            waited(p.reserve("r", "DeregisterImage", later, DAY)).as_secs(),
            1
        );
    }

    #[test]
    fn a_token_after_the_deadline_is_not_taken() {
        let p = Pacer::new(10); // DeregisterImage: burst 5, 0.5 per second.
        let t0 = Instant::now();
        let left_at = |t: Instant| (SAFETY_MARGIN + Duration::from_secs(5)) - (t - t0);
        for _ in 0..5 {
            waited(p.reserve("r", "DeregisterImage", t0, left_at(t0)));
        }
        // Each next token is 2 s away: two still fit before the margin, the third does not.
        let mut t = t0;
        for _ in 0..2 {
            t += waited(p.reserve("r", "DeregisterImage", t, left_at(t)));
        }
        assert_eq!(t - t0, Duration::from_secs(4));
        assert_eq!(
            p.reserve("r", "DeregisterImage", t, left_at(t)),
            Grant::TooLate
        );
        // The refused call took no token: with time to spare, the next one is still 2 s away.
        assert_eq!(
            waited(p.reserve("r", "DeregisterImage", t, DAY)).as_secs(),
            2
        );
    }

    #[test]
    fn without_pacing_nothing_is_counted() {
        let p = Pacer::new(0);
        assert_eq!(
            p.reserve("r", "DeregisterImage", Instant::now(), DAY),
            Grant::Unpaced
        );
    }

    #[tokio::test]
    async fn acquire_sleeps_for_its_token_and_defers_past_the_deadline() {
        // DeregisterImage at 1000 %: burst 500, 50 tokens per second (one every 20 ms).
        let p = Pacer::new(1000);
        let deadline = Deadline::after(DAY);
        let start = Instant::now();
        for _ in 0..502 {
            assert!(p.acquire("r", "DeregisterImage", &deadline).await);
        }
        // 502 tokens from a bucket of 500 that refills 50 per second, created after `start`:
        // the last two were waited for, 40 ms of refill at the least.
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "{:?}",
            start.elapsed()
        );
        // Within the safety margin nothing may start, paced or not.
        let late = Deadline::after(SAFETY_MARGIN);
        assert!(!p.acquire("r", "DeregisterImage", &late).await);
        assert!(!Pacer::new(0).acquire("r", "DeregisterImage", &late).await);
        assert!(
            Pacer::new(0)
                .acquire("r", "DeregisterImage", &deadline)
                .await
        );
    }
}
