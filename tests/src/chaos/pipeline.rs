//! One run of the pipeline under chaos, phase by phase, in its own account: uploads; their
//! events to create-image (duplicated, shuffled, late, concurrent, with sweeps in between);
//! every SNS message create-image sent to tag-lineage (duplicated) with the EventBridge
//! "available" events; every `image.ready` to publish (duplicated) with schedule runs, the
//! copies' "available" events and images derived from the copies; cleanup (concurrent, real
//! runs) on a backdated family; then the schedules until nothing changes. The fault-free
//! reference is the same code with one delivery of each event, one at a time, in order.

use super::faults::{Faults, Kind, Rates};
use super::invoke::{Clock, Delivered, Delivery, Env, Fns, Fun, run_all};
use super::observe::{Inventory, Key, observer};
use super::rng::Rng;
use super::scenario::{
    COPY_REGIONS, FAST_PATH_MAX_GIB, Object, SHARE_ACCOUNT, Upload, object_created,
    s3_notification, scheduled,
};
use crate::{REGION, TestAccount, aws_events, fixtures};
use chrono::Utc;
use serde_json::{Value, json};
use shared::model::Select;
use shared::plan::tags::{MANAGED, PUBLISH_SOURCE, PUBLISH_STATE, SOURCE_URI};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a run delivers events.
#[derive(Debug, Clone)]
pub struct Mode {
    /// Deliveries of each event (`--dup`).
    pub dup: usize,
    /// Share of the functions' AWS calls failed with a transient error (`--fault-rate`).
    pub fault_rate: f64,
    /// Faults the SDK does not retry are among them (SNS `Throttled`; not `--retried-only`).
    pub unretried: bool,
    /// Share of the functions' calls that take effect and then fail the invocation
    /// (`--crash-rate`).
    pub crash_rate: f64,
    /// Share of the functions' calls that take effect and whose answer is lost, so the SDK
    /// repeats them (`--lost-rate`).
    pub lost_rate: f64,
    /// EC2 eventual consistency during the pipeline phases, in seconds (`--lag`; 0: off).
    pub lag_seconds: f64,
    /// Concurrent, shuffled, late deliveries (false: the in-order reference).
    pub concurrent: bool,
    /// Schedule rounds that still run under faults before they stop (`--fault-rounds`).
    pub fault_rounds: usize,
    /// Rounds after which a run that still changes something has not converged.
    pub max_rounds: usize,
}

impl Mode {
    /// The fault-free reference: each event once, in order, no faults.
    pub fn reference(max_rounds: usize) -> Self {
        Mode {
            dup: 1,
            fault_rate: 0.0,
            unretried: false,
            crash_rate: 0.0,
            lost_rate: 0.0,
            lag_seconds: 0.0,
            concurrent: false,
            fault_rounds: 0,
            max_rounds,
        }
    }

    /// The fault rates of each kind.
    pub fn rates(&self) -> Rates {
        Rates {
            transient: self.fault_rate,
            crash: self.crash_rate,
            lost: self.lost_rate,
        }
    }
}

/// The period of the schedules in the rounds (create-image's sweep default, `rate(15 minutes)`):
/// round `r` runs `r` periods after the events, so every grace window of the functions elapses.
pub const ROUND_PERIOD_MINUTES: i64 = 15;
/// Cleanup's grace (`GRACE_DAYS`): its first runs deprecate, runs this long later deregister.
pub const GRACE_DAYS: i64 = 1;
/// The backdated family: ages in days, and which one is protected.
pub const LEGACY_AGES: [(i64, bool); 6] = [
    (10, false),
    (20, false),
    (35, false),
    (40, false),
    (50, true),
    (60, false),
];
/// The backdated family's name.
pub const LEGACY_FAMILY: &str = "chaos-legacy";

/// A message the topic carried, with the phase that drained it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// `create`, `lineage`, `publish`, `cleanup`, `round 3`, …
    pub phase: String,
    /// The message body.
    pub body: Value,
}

/// An image the harness derived from a copy (RunInstances + CreateImage, as a user would).
#[derive(Debug, Clone)]
pub struct Derived {
    /// The upload whose copy it came from.
    pub upload: usize,
    /// The copy's region.
    pub region: String,
    /// The copy.
    pub parent: String,
    /// The instance.
    pub instance: String,
    /// The derived image.
    pub image: String,
}

/// One image of the backdated family.
#[derive(Debug, Clone)]
pub struct LegacyImage {
    /// Image id.
    pub image: String,
    /// Its snapshot.
    pub snapshot: String,
    /// Age in days.
    pub days: i64,
    /// Tagged `ami-pipeline:protect`.
    pub protected: bool,
}

/// One schedule round.
#[derive(Debug, Clone)]
pub struct RoundLog {
    /// 1-based.
    pub round: usize,
    /// Faults were on.
    pub faults: bool,
    /// Events delivered besides the schedules (messages and "available" events).
    pub inputs: usize,
    /// Resources that changed (a few named).
    pub changes: Vec<String>,
    /// Messages the round sent.
    pub produced: usize,
    /// Work still moving on AWS's side after it.
    pub in_flight: usize,
}

/// Everything a run did and saw.
pub struct Run {
    /// How it delivered.
    pub mode: Mode,
    /// Its seed.
    pub seed: u64,
    /// Its account.
    pub acct: TestAccount,
    /// The pipeline topic.
    pub topic: String,
    queue: String,
    /// The uploads bucket.
    pub bucket: String,
    fns: Arc<Fns>,
    rng: Rng,
    faults: Faults,
    /// The uploads.
    pub uploads: Vec<Upload>,
    /// Each upload's object as uploaded.
    pub objects: Vec<Object>,
    /// Every message the topic carried.
    pub messages: Vec<Logged>,
    stashed: Vec<Value>,
    evented: BTreeSet<Key>,
    /// Images derived from copies.
    pub derived: Vec<Derived>,
    /// The backdated family.
    pub legacy: Vec<LegacyImage>,
    /// Wall time per phase.
    pub timings: Vec<(String, Duration)>,
    /// The pipeline's schedule rounds.
    pub rounds: Vec<RoundLog>,
    /// The pipeline converged (a round changed nothing) within the bound.
    pub converged: bool,
    /// Cleanup's rounds until nothing changed.
    pub cleanup_rounds: Vec<RoundLog>,
    /// Cleanup converged.
    pub cleanup_converged: bool,
    /// What existed before cleanup's first runs.
    pub before_cleanup: Inventory,
    /// What exists after cleanup's first (deprecating) runs.
    pub after_deprecate: Inventory,
    /// What existed once the pipeline converged.
    pub at_convergence: Inventory,
    /// What exists at the end.
    pub at_end: Inventory,
    /// Every delivery's result (evidence of dead-lettered events).
    pub delivered: Vec<Delivered>,
}

/// The regions a run works in: home first.
pub fn regions() -> Vec<&'static str> {
    let mut r = vec![REGION];
    r.extend(COPY_REGIONS);
    r
}

fn envs(topic: &str, state_bucket: &str) -> BTreeMap<Fun, Env> {
    let all = regions().join(",");
    let common = |extra: &[(&'static str, &str)]| -> Env {
        let mut e: Env = BTreeMap::from([
            ("TOPIC_ARN", topic.to_owned()),
            ("S3_FORCE_PATH_STYLE", "true".to_owned()),
        ]);
        e.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        e
    };
    let grace = GRACE_DAYS.to_string();
    BTreeMap::from([
        (
            Fun::CreateImage,
            common(&[
                ("FAST_PATH_MAX_GIB", FAST_PATH_MAX_GIB),
                ("STATE_BUCKET", state_bucket),
            ]),
        ),
        (
            Fun::TagLineage,
            common(&[
                ("LINEAGE_REGIONS", &all),
                ("VISIBILITY_WAIT_SECONDS", "2"),
                ("STATE_BUCKET", state_bucket),
            ]),
        ),
        (
            Fun::Publish,
            common(&[
                ("PUBLISH_REGIONS", &COPY_REGIONS.join(",")),
                ("SHARE_ACCOUNTS", SHARE_ACCOUNT),
                ("STATE_BUCKET", state_bucket),
            ]),
        ),
        (
            Fun::Cleanup,
            common(&[
                ("CLEANUP_REGIONS", &all),
                ("KEEP_NEWEST", "2"),
                ("MIN_AGE_DAYS", "30"),
                ("GRACE_DAYS", &grace),
                ("DRY_RUN", "false"),
            ]),
        ),
    ])
}

impl Run {
    /// A fresh account with the topic, a versioned uploads bucket, the uploads and the
    /// backdated family in place, and `min(dup, 3)` copies of each function.
    pub async fn setup(mode: Mode, seed: u64, uploads: Vec<Upload>) -> Run {
        let acct = TestAccount::new().await;
        acct.emulator_config(json!({"import_delay_seconds": 2, "copy_delay_seconds": 2}));
        let (topic, queue) = acct.topic_with_queue("ami-pipeline").await;
        let bucket = format!("uploads-{}", acct.account_id);
        acct.bucket(&bucket, true).await;
        // The template's state bucket: create-image (fast path), tag-lineage and publish claim
        // their announcements.
        let state = crate::roles::state_bucket_name(&acct.account_id);
        acct.bucket(&state, false).await;
        let lagged = mode.lag_seconds > 0.0;
        let fns = Fns::new(
            &acct,
            &envs(&topic, &state),
            &bucket,
            mode.dup.min(3),
            lagged,
            seed,
        )
        .await;
        let faults = Faults::new(&acct, mode.rates(), seed, mode.unretried);
        let mut run = Run {
            mode,
            seed,
            acct,
            topic,
            queue,
            bucket,
            fns,
            rng: Rng::new(seed),
            faults,
            uploads,
            objects: Vec::new(),
            messages: Vec::new(),
            stashed: Vec::new(),
            evented: BTreeSet::new(),
            derived: Vec::new(),
            legacy: Vec::new(),
            timings: Vec::new(),
            rounds: Vec::new(),
            converged: false,
            cleanup_rounds: Vec::new(),
            cleanup_converged: false,
            before_cleanup: Inventory::default(),
            after_deprecate: Inventory::default(),
            at_convergence: Inventory::default(),
            at_end: Inventory::default(),
            delivered: Vec::new(),
        };
        run.put_uploads().await;
        run.make_legacy().await;
        run
    }

    async fn put_uploads(&mut self) {
        for u in &self.uploads {
            let (etag, version) = self
                .acct
                .put(&self.bucket, &u.key, u.bytes.clone(), &[])
                .await;
            self.objects.push(Object {
                bucket: self.bucket.clone(),
                key: u.key.clone(),
                etag,
                version,
                size: u.bytes.len(),
            });
        }
    }

    /// The backdated family cleanup works on: managed images of `chaos-legacy` made 10 to 60
    /// days ago, one protected. Their events are long past (never delivered).
    async fn make_legacy(&mut self) {
        let ec2 = &self.acct.clients.ec2;
        for (n, (days, protected)) in LEGACY_AGES.into_iter().enumerate() {
            let mut tags = vec![(MANAGED, "true"), ("ami-pipeline:family", LEGACY_FAMILY)];
            if protected {
                tags.push(("ami-pipeline:protect", "true"));
            }
            let (image, snapshot) =
                fixtures::image(ec2, &format!("{LEGACY_FAMILY}-{n}"), &tags).await;
            self.acct
                .backdate_image(REGION, &image, Utc::now() - chrono::Duration::days(days));
            self.evented.insert((REGION.to_owned(), image.clone()));
            self.legacy.push(LegacyImage {
                image,
                snapshot,
                days,
                protected,
            });
        }
    }

    /// Runs every phase; the run's record is in `self`.
    pub async fn execute(&mut self) {
        let started = Instant::now();
        self.faults.set(true);
        self.set_lag(true);
        let t = Instant::now();
        self.phase_create().await;
        self.collect("create-image").await;
        self.lap("create-image", t);
        let t = Instant::now();
        self.phase_lineage().await;
        self.collect("tag-lineage").await;
        self.lap("tag-lineage", t);
        let t = Instant::now();
        self.phase_publish().await;
        self.collect("publish").await;
        self.lap("publish", t);
        let t = Instant::now();
        self.phase_deprecate().await;
        self.collect("cleanup (deprecate)").await;
        self.lap("cleanup (deprecate)", t);
        let t = Instant::now();
        self.converge().await;
        self.lap("schedules until quiet", t);
        let t = Instant::now();
        self.phase_remove().await;
        self.lap("cleanup (deregister)", t);
        self.faults.set(false);
        self.lap("total", started);
    }

    /// EC2 eventual consistency for the run's account on (`lag_seconds`, if any) or off. Off,
    /// every read sees the current state at once (the emulator's lag is a view of the past),
    /// so the harness's quiet rounds and end-state reads never see stale state.
    fn set_lag(&mut self, on: bool) {
        if self.mode.lag_seconds <= 0.0 {
            return;
        }
        let lag = if on { self.mode.lag_seconds } else { 0.0 };
        self.acct.control(
            "POST",
            "/ami-pipeline-emulator/consistency",
            Some(json!({"lag_seconds": lag})),
        );
    }

    fn lap(&mut self, name: &str, since: Instant) {
        self.timings.push((name.to_owned(), since.elapsed()));
    }

    /// The fault rules' figures: (service, code, kind) → (matched, fired).
    pub fn fault_figures(&self) -> BTreeMap<(String, String, Kind), (u64, u64)> {
        self.faults.figures()
    }

    /// Faults fired per kind.
    pub fn faults_per_kind(&self) -> BTreeMap<Kind, u64> {
        self.faults.per_kind()
    }

    /// Faults fired after the call took effect (crashes, lost responses) on `service`.
    pub fn after_fired(&self, service: &str) -> u64 {
        self.faults.after_fired(service)
    }

    /// The functions' calls and the faults fired per service: service → (calls, fired).
    pub fn fault_calls(&self) -> BTreeMap<String, (u64, u64)> {
        self.faults.per_service()
    }

    /// What happened to each function's invocations.
    pub fn stats(&self) -> BTreeMap<Fun, super::invoke::FunStats> {
        self.fns.stats()
    }

    /// Drains the topic's queue: every new message is logged under `phase` (the phase that
    /// sent it) and kept for the next phase to hand on; returns how many there were.
    async fn collect(&mut self, phase: &str) -> usize {
        let new = self.acct.drain(&self.queue).await;
        for body in &new {
            self.messages.push(Logged {
                phase: phase.to_owned(),
                body: body.clone(),
            });
        }
        let n = new.len();
        self.stashed.extend(new);
        n
    }

    /// The messages collected and not handed on yet.
    fn take_messages(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.stashed)
    }

    /// `dup` deliveries of one event, spread over `spread_ms` (a fifth of them later still).
    fn copies_of(&mut self, fun: Fun, event: &Value, what: &str, spread_ms: u64) -> Vec<Delivery> {
        (0..self.mode.dup)
            .map(|_| Delivery {
                fun,
                event: event.clone(),
                delay: self.delay(spread_ms),
                what: what.to_owned(),
            })
            .collect()
    }

    fn delay(&mut self, spread_ms: u64) -> Duration {
        if !self.mode.concurrent {
            return Duration::ZERO;
        }
        let mut ms = self.rng.between(0, spread_ms);
        if self.rng.chance(0.2) {
            ms += self.rng.between(spread_ms, 3 * spread_ms);
        }
        Duration::from_millis(ms)
    }

    /// `n` schedule runs of `fun` at random times within `spread_ms`.
    fn schedules(&mut self, fun: Fun, rule: &str, n: usize, spread_ms: u64) -> Vec<Delivery> {
        (0..n)
            .map(|_| Delivery {
                fun,
                event: scheduled(rule),
                delay: if self.mode.concurrent {
                    Duration::from_millis(self.rng.between(0, spread_ms))
                } else {
                    Duration::ZERO
                },
                what: format!("{} schedule", fun.name()),
            })
            .collect()
    }

    /// Delivers `deliveries` (shuffled when concurrent) and records the results.
    async fn deliver(&mut self, mut deliveries: Vec<Delivery>, clock: Clock) {
        if self.mode.concurrent {
            self.rng.shuffle(&mut deliveries);
        }
        let done = run_all(&self.fns, deliveries, clock, self.mode.concurrent).await;
        self.delivered.extend(done);
    }

    /// Each upload's event `dup` times (the S3 notification first, the EventBridge form next,
    /// then either), shuffled, some late, concurrently, with sweeps in between. The reference
    /// delivers each notification once, waits for the imports, then sweeps once.
    async fn phase_create(&mut self) {
        let mut deliveries = Vec::new();
        let pairs: Vec<(String, Object)> = self
            .uploads
            .iter()
            .map(Upload::name)
            .zip(self.objects.clone())
            .collect();
        for (name, o) in pairs {
            for d in 0..self.mode.dup {
                let eventbridge = d == 1 || (d > 1 && self.rng.chance(0.5));
                let (event, form) = if eventbridge {
                    (object_created(&o), "EventBridge Object Created")
                } else {
                    (s3_notification(&o), "S3 notification")
                };
                let delay = self.delay(1500);
                deliveries.push(Delivery {
                    fun: Fun::CreateImage,
                    event,
                    delay,
                    what: format!("{name} {form}"),
                });
            }
        }
        if self.mode.concurrent {
            let n = self.mode.dup.max(2);
            deliveries.extend(self.schedules(Fun::CreateImage, "create-image-sweep", n, 4000));
            self.deliver(deliveries, Clock::real()).await;
        } else {
            self.deliver(deliveries, Clock::real()).await;
            self.wait_in_flight(Duration::from_secs(60)).await;
            let sweep = self.schedules(Fun::CreateImage, "create-image-sweep", 1, 0);
            self.deliver(sweep, Clock::real()).await;
        }
    }

    async fn wait_in_flight(&self, limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            let inv = Inventory::read(&self.acct, &regions()).await;
            if inv.in_flight().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deliveries for messages: `image.registered` → tag-lineage, `image.ready` → publish,
    /// each `dup` times, as SNS delivers them to the functions' subscriptions.
    fn message_deliveries(&mut self, msgs: &[Value], spread_ms: u64) -> Vec<Delivery> {
        let mut out = Vec::new();
        for m in msgs {
            let fun = match m["event_type"].as_str() {
                Some("image.registered") => Fun::TagLineage,
                Some("image.ready") => Fun::Publish,
                _ => continue,
            };
            let what = format!(
                "SNS {} {}",
                m["event_type"].as_str().unwrap_or_default(),
                m["image_id"].as_str().unwrap_or_default()
            );
            let event = aws_events::sns(&self.topic, m);
            out.extend(self.copies_of(fun, &event, &what, spread_ms));
        }
        out
    }

    /// "EC2 AMI State Change" `available` of every available image whose event was not
    /// delivered yet (`dup` times each).
    async fn available_events(&mut self, spread_ms: u64) -> Vec<Delivery> {
        let inv = Inventory::read(&self.acct, &regions()).await;
        let mut out = Vec::new();
        for ((region, id), image) in &inv.images {
            let key = (region.clone(), id.clone());
            if image.state != "available" || self.evented.contains(&key) {
                continue;
            }
            self.evented.insert(key);
            let event = aws_events::ami_state_change(region, id, "available", "");
            let what = format!("EventBridge available {id} in {region}");
            out.extend(self.copies_of(Fun::TagLineage, &event, &what, spread_ms));
        }
        out
    }

    /// Every message create-image sent, `dup` times each, with the "available" events of the
    /// new images and a tag-lineage schedule run, concurrently.
    async fn phase_lineage(&mut self) {
        let msgs = self.take_messages();
        let mut deliveries = self.message_deliveries(&msgs, 1500);
        deliveries.extend(self.available_events(1500).await);
        if self.mode.concurrent {
            deliveries.extend(self.schedules(Fun::TagLineage, "tag-lineage-sweep", 1, 3000));
        }
        self.deliver(deliveries, Clock::real()).await;
    }

    /// Every `image.ready`, `dup` times, with publish schedule runs; meanwhile each copy's
    /// "available" event as soon as it is available, and for the chosen uploads an image made
    /// from an instance of the first region's copy (and its event). The reference publishes,
    /// lets the schedule finish, then sends the copies' events and derives the images.
    async fn phase_publish(&mut self) {
        let msgs = self.take_messages();
        let mut deliveries = self.message_deliveries(&msgs, 1500);
        // Under the lag an image registered just now is not listed yet: wait it out, so that
        // every upload registered by now gets its copies watched and its derived image.
        self.wait_out_lag().await;
        let sources = self.sources().await;
        let ctx = self.watch_context();
        let mut rng = self.rng.fork();
        if self.mode.concurrent {
            let n = self.mode.dup.max(2);
            deliveries.extend(self.schedules(Fun::Publish, "publish-advance", n, 5000));
            rng.shuffle(&mut deliveries);
            let fns = Arc::clone(&self.fns);
            let publishing = run_all(&fns, deliveries, Clock::real(), true);
            let (done, (evented, derived, watched)) =
                tokio::join!(publishing, watch_copies(ctx, sources, rng));
            self.delivered.extend(done);
            self.absorb(evented, derived, watched);
        } else {
            self.deliver(deliveries, Clock::real()).await;
            for _ in 0..30 {
                self.wait_in_flight(Duration::from_secs(30)).await;
                let sched = self.schedules(Fun::Publish, "publish-advance", 1, 0);
                self.deliver(sched, Clock::real()).await;
                if self.publishing().await == 0 {
                    break;
                }
            }
            let (evented, derived, watched) = watch_copies(ctx, sources, rng).await;
            self.absorb(evented, derived, watched);
        }
    }

    fn absorb(&mut self, evented: Vec<Key>, derived: Vec<Derived>, done: Vec<Delivered>) {
        self.evented.extend(evented);
        self.derived.extend(derived);
        self.delivered.extend(done);
    }

    fn watch_context(&self) -> WatchContext {
        WatchContext {
            fns: Arc::clone(&self.fns),
            ec2: regions()
                .into_iter()
                .map(|r| (r.to_owned(), observer(&self.acct, r)))
                .collect(),
            dup: self.mode.dup,
            concurrent: self.mode.concurrent,
            derive: self
                .uploads
                .iter()
                .filter(|u| u.derived)
                .map(|u| u.index)
                .collect(),
        }
    }

    /// The derived images whose copy was not available while the publish phase watched for it
    /// (a publication slowed by faults past [`COPY_WAIT`]): made now, from the copy that has
    /// appeared since, as the user would once it exists; the next round delivers its event.
    /// Without this the scenario lost them and the lineage check found them missing.
    async fn derive_late(&mut self) {
        let made: BTreeSet<usize> = self.derived.iter().map(|d| d.upload).collect();
        let wanted: Vec<usize> = self
            .uploads
            .iter()
            .filter(|u| u.derived && !made.contains(&u.index))
            .map(|u| u.index)
            .collect();
        if wanted.is_empty() {
            return;
        }
        let region = COPY_REGIONS[0];
        let ec2 = observer(&self.acct, region);
        for (upload, source) in self.sources().await {
            if !wanted.contains(&upload) {
                continue;
            }
            let copies = shared::aws::ec2::describe_own_images(
                &ec2,
                &[Select::tag(PUBLISH_SOURCE, [source.as_str()])],
            )
            .await
            .unwrap_or_default();
            let Some(copy) = copies.into_iter().find(|i| i.state == "available") else {
                continue;
            };
            let instance = fixtures::instance(&ec2, &copy.id).await;
            let name = format!("chaos-derived-u{upload:02}-{}", &instance[2..]);
            let image = fixtures::image_from_instance(&ec2, &instance, &name).await;
            self.derived.push(Derived {
                upload,
                region: region.to_owned(),
                parent: copy.id,
                instance,
                image,
            });
        }
    }

    /// The uploads' source images in the home region: (upload index, image id).
    async fn sources(&self) -> Vec<(usize, String)> {
        let inv = Inventory::read(&self.acct, &[REGION]).await;
        let mut out = Vec::new();
        for u in &self.uploads {
            let uri = self.source_uri(u.index);
            for i in inv.images_in(REGION) {
                if i.tags.get(SOURCE_URI) == Some(&uri)
                    && !i.tags.contains_key(PUBLISH_SOURCE)
                    && i.source_image_id.is_none()
                {
                    out.push((u.index, i.id.clone()));
                }
            }
        }
        out
    }

    /// The `ami-pipeline:source-uri` of upload `index` (`s3://bucket/key?versionId=…`).
    pub fn source_uri(&self, index: usize) -> String {
        let o = &self.objects[index];
        match &o.version {
            Some(v) => format!("s3://{}/{}?versionId={v}", o.bucket, o.key),
            None => format!("s3://{}/{}", o.bucket, o.key),
        }
    }

    /// Source images still marked `publish-state=in-progress` (`usize::MAX` if unreadable).
    async fn publishing(&self) -> usize {
        shared::aws::ec2::describe_own_images(
            &observer(&self.acct, REGION),
            &[Select::tag(PUBLISH_STATE, ["in-progress"])],
        )
        .await
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
    }

    /// cleanup's first runs, `dup` of them at once, under faults: they deprecate the stale
    /// images of the backdated family (deregistration waits `GRACE_DAYS`).
    async fn phase_deprecate(&mut self) {
        self.wait_out_lag().await;
        self.before_cleanup = Inventory::read(&self.acct, &regions()).await;
        let n = self.mode.dup;
        let runs = self.schedules(Fun::Cleanup, "cleanup-daily", n, 500);
        self.deliver(runs, Clock::real()).await;
        self.wait_out_lag().await;
        self.after_deprecate = Inventory::read(&self.acct, &regions()).await;
    }

    /// With a lag on, waits it out, so that a read sees everything done before the call (the
    /// evidence the checks compare must not be stale).
    async fn wait_out_lag(&self) {
        if self.mode.lag_seconds > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(self.mode.lag_seconds + 0.2)).await;
        }
    }

    /// The schedules (create-image sweep, tag-lineage schedule, publish schedule), round after
    /// round `ROUND_PERIOD_MINUTES` apart on the functions' clock, with the messages and
    /// "available" events the previous round produced, until a round without faults and
    /// without inputs changes nothing, sends nothing and leaves nothing in flight.
    async fn converge(&mut self) {
        for round in 1..=self.mode.max_rounds {
            let faults = self.mode.rates().any() && round <= self.mode.fault_rounds;
            self.faults.set(faults);
            // No lag in the rounds: they run on a clock 15 minutes apart from S3's, so a claim
            // (shared::claim, aged by S3's LastModified) made by one invocation of a round looks
            // stale to another of the same round, and with the announcement's record (a tag)
            // not listed yet the other takes it over and announces again: a duplicate AWS
            // would not make (there the claim is seconds old, held). The rounds that decide
            // convergence, and every inventory the checks read, see the current state.
            self.set_lag(false);
            let minutes = ROUND_PERIOD_MINUTES * round as i64;
            let clock = Clock::later(chrono::Duration::minutes(minutes));
            self.derive_late().await;
            let msgs = self.take_messages();
            let mut deliveries = self.message_deliveries(&msgs, 1000);
            deliveries.extend(self.available_events(1000).await);
            let inputs = deliveries.len();
            deliveries.extend(self.schedules(Fun::CreateImage, "create-image-sweep", 1, 500));
            deliveries.extend(self.schedules(Fun::TagLineage, "tag-lineage-sweep", 1, 500));
            deliveries.extend(self.schedules(Fun::Publish, "publish-advance", 1, 500));
            let before = Inventory::read(&self.acct, &regions()).await;
            self.deliver(deliveries, clock).await;
            let after = Inventory::read(&self.acct, &regions()).await;
            let produced = self.collect(&format!("round {round}")).await;
            let log = RoundLog {
                round,
                faults,
                inputs,
                changes: after.changes_since(&before, 5),
                produced,
                in_flight: after.in_flight().len(),
            };
            let quiet = !faults
                && log.inputs == 0
                && log.changes.is_empty()
                && log.produced == 0
                && log.in_flight == 0;
            let waiting = log.in_flight > 0;
            self.rounds.push(log);
            if quiet {
                self.converged = true;
                break;
            }
            if waiting {
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }
        self.faults.set(false);
        self.at_convergence = Inventory::read(&self.acct, &regions()).await;
    }

    /// cleanup `GRACE_DAYS` + 1 later: `dup` runs at once under faults, then one run per round
    /// (faults off) until a run changes nothing; then the same rounds another `GRACE_DAYS` + 1
    /// later. The second pass is what a daily schedule does next: an image the first phase's
    /// runs could not deprecate (its launch permissions or references unreadable under faults:
    /// skipped, with that reason) is deprecated by the first pass and, rightly, kept for its
    /// grace period; the second removes it. Without it the check counted that wait as a missed
    /// removal (seed 2002).
    async fn phase_remove(&mut self) {
        let later = chrono::Duration::days(GRACE_DAYS + 1);
        self.faults.set(true);
        let n = self.mode.dup;
        let runs = self.schedules(Fun::Cleanup, "cleanup-daily", n, 500);
        self.deliver(runs, Clock::later(later)).await;
        self.faults.set(false);
        self.cleanup_converged =
            self.cleanup_rounds_at(later).await && self.cleanup_rounds_at(later + later).await;
        self.collect("cleanup (deregister)").await;
        self.at_end = Inventory::read(&self.acct, &regions()).await;
    }

    /// One cleanup run per round, `ROUND_PERIOD_MINUTES` apart from `later`, until a run
    /// changes nothing (true) or `max_rounds` (false).
    async fn cleanup_rounds_at(&mut self, later: chrono::Duration) -> bool {
        for round in 1..=self.mode.max_rounds {
            let minutes = ROUND_PERIOD_MINUTES * round as i64;
            let clock = Clock::later(later + chrono::Duration::minutes(minutes));
            let before = Inventory::read(&self.acct, &regions()).await;
            let run = self.schedules(Fun::Cleanup, "cleanup-daily", 1, 0);
            self.deliver(run, clock).await;
            let after = Inventory::read(&self.acct, &regions()).await;
            let changes = after.changes_since(&before, 5);
            let quiet = changes.is_empty();
            self.cleanup_rounds.push(RoundLog {
                round,
                faults: false,
                inputs: 0,
                changes,
                produced: 0,
                in_flight: after.in_flight().len(),
            });
            if quiet {
                return true;
            }
        }
        false
    }
}

/// What the copy watchers need (cloned into their tasks).
#[derive(Clone)]
struct WatchContext {
    fns: Arc<Fns>,
    ec2: BTreeMap<String, aws_sdk_ec2::Client>,
    dup: usize,
    concurrent: bool,
    derive: BTreeSet<usize>,
}

/// Waits (up to this long) for a copy to exist and be available.
const COPY_WAIT: Duration = Duration::from_secs(25);

/// For each source and copy region: waits until the copy is available, then delivers its
/// "available" event `dup` times; for the uploads chosen, in the first copy region, launches an
/// instance of the copy, makes an image of it and delivers that image's event `dup` times
/// (possibly before publish has stamped the copy: lineage must come out the same). Concurrent:
/// one task per (source, region); else one after the other. Returns the images evented, the
/// derived images and the deliveries.
async fn watch_copies(
    ctx: WatchContext,
    sources: Vec<(usize, String)>,
    mut rng: Rng,
) -> (Vec<Key>, Vec<Derived>, Vec<Delivered>) {
    let mut results = Vec::new();
    let mut tasks = Vec::new();
    for (upload, source) in sources {
        for region in COPY_REGIONS {
            let (c, source, rng) = (ctx.clone(), source.clone(), rng.fork());
            if ctx.concurrent {
                // A thread of its own, like the deliveries (see `invoke::run_all`).
                let handle = tokio::runtime::Handle::current();
                tasks.push(tokio::task::spawn_blocking(move || {
                    handle.block_on(watch_one(c, upload, source, region, rng))
                }));
            } else {
                results.push(watch_one(c, upload, source, region, rng).await);
            }
        }
    }
    for t in tasks {
        match t.await {
            Ok(r) => results.push(r),
            Err(e) => panic!("a copy watcher panicked: {e}"),
        }
    }
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (evented, derived, done) in results {
        out.0.extend(evented);
        out.1.extend(derived);
        out.2.extend(done);
    }
    out
}

async fn watch_one(
    ctx: WatchContext,
    upload: usize,
    source: String,
    region: &'static str,
    mut rng: Rng,
) -> (Vec<Key>, Option<Derived>, Vec<Delivered>) {
    let ec2 = &ctx.ec2[region];
    let started = Instant::now();
    let copy = loop {
        let found = shared::aws::ec2::describe_own_images(
            ec2,
            &[Select::tag(PUBLISH_SOURCE, [source.as_str()])],
        )
        .await
        .unwrap_or_default();
        if let Some(c) = found.into_iter().find(|i| i.state == "available") {
            break Some(c.id);
        }
        if started.elapsed() > COPY_WAIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let Some(copy) = copy else {
        return (Vec::new(), None, Vec::new());
    };
    let mut evented = vec![(region.to_owned(), copy.clone())];
    let mut deliveries = available(&ctx, region, &copy, &mut rng);
    let mut derived = None;
    if region == COPY_REGIONS[0] && ctx.derive.contains(&upload) {
        let instance = fixtures::instance(ec2, &copy).await;
        let name = format!("chaos-derived-u{upload:02}-{}", &instance[2..]);
        let image = fixtures::image_from_instance(ec2, &instance, &name).await;
        evented.push((region.to_owned(), image.clone()));
        deliveries.extend(available(&ctx, region, &image, &mut rng));
        derived = Some(Derived {
            upload,
            region: region.to_owned(),
            parent: copy,
            instance,
            image,
        });
    }
    let done = run_all(&ctx.fns, deliveries, Clock::real(), ctx.concurrent).await;
    (evented, derived, done)
}

fn available(ctx: &WatchContext, region: &str, image: &str, rng: &mut Rng) -> Vec<Delivery> {
    let event = aws_events::ami_state_change(region, image, "available", "");
    (0..ctx.dup)
        .map(|_| Delivery {
            fun: Fun::TagLineage,
            event: event.clone(),
            delay: if ctx.concurrent {
                Duration::from_millis(rng.between(0, 1500))
            } else {
                Duration::ZERO
            },
            what: format!("EventBridge available {image} in {region}"),
        })
        .collect()
}
