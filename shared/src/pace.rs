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
        let Some(limit) = self.limit(action) else {
            return deadline.may_start();
        };
        let wait = {
            let Ok(mut buckets) = self.buckets.lock() else {
                return deadline.may_start();
            };
            let now = Instant::now();
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
            if !deadline.has_left(wait + SAFETY_MARGIN) {
                return false;
            }
            b.tokens -= 1.0;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        true
    }
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

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_burst_wait_for_the_refill_rate() {
        let p = Pacer::new(20); // DeregisterImage: burst 10 (half of 20), 1 per second.
        let deadline = Deadline::after(Duration::from_secs(3600));
        let start = Instant::now();
        for _ in 0..10 {
            assert!(p.acquire("r", "DeregisterImage", &deadline).await);
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..4 {
            assert!(p.acquire("r", "DeregisterImage", &deadline).await);
        }
        // Four more tokens at 1 per second.
        assert_eq!(start.elapsed().as_secs(), 4);
        // Another region has its own bucket.
        assert!(p.acquire("s", "DeregisterImage", &deadline).await);
        assert_eq!(start.elapsed().as_secs(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_after_the_deadline_is_not_taken() {
        let p = Pacer::new(10); // DeregisterImage: burst 5, 0.5 per second.
        let deadline = Deadline::after(SAFETY_MARGIN + Duration::from_secs(5));
        for _ in 0..5 {
            assert!(p.acquire("r", "DeregisterImage", &deadline).await);
        }
        // Each next token is 2 s away: two still fit before the margin, the third does not.
        assert!(p.acquire("r", "DeregisterImage", &deadline).await);
        assert!(p.acquire("r", "DeregisterImage", &deadline).await);
        assert!(!p.acquire("r", "DeregisterImage", &deadline).await);
    }
}
