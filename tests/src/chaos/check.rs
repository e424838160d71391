//! The invariants of a run, each with its evidence when it fails, and the figures (counts,
//! not only pass/fail): one AMI and at most one import per upload, one copy per (image,
//! region), no orphan, one announcement per (image, event type) (raw and by `dedup_key`),
//! every upload published and shared, lineage identical to the fault-free reference, cleanup
//! removing exactly the stale images of the backdated family, convergence.

use super::observe::{Inventory, Key};
use super::pipeline::{Run, regions};
use super::scenario::{COPY_REGIONS, SHARE_ACCOUNT};
use crate::REGION;
use serde_json::Value;
use shared::model::{Image, ImportStatus};
use shared::plan::lineage::{
    ANCESTRY, FAMILY, GENERATION, MANAGED, SOURCE_FORMAT, SOURCE_IMAGE, SOURCE_INSTANCE,
    SOURCE_REGION, SOURCE_SNAPSHOT, SOURCE_URI, UPLOAD_METHOD,
};
use shared::plan::tags::{PUBLISH_SOURCE, PUBLISH_STATE};
use std::collections::{BTreeMap, BTreeSet};

/// The lineage tags compared with the reference (ids mapped to names like `u03@us-west-2`;
/// the upload's own ids, versions, ETags and dates differ between runs by nature).
pub const COMPARED: [&str; 11] = [
    MANAGED,
    FAMILY,
    SOURCE_URI,
    SOURCE_FORMAT,
    UPLOAD_METHOD,
    SOURCE_IMAGE,
    SOURCE_INSTANCE,
    SOURCE_REGION,
    GENERATION,
    ANCESTRY,
    SOURCE_SNAPSHOT,
];

/// The announcements counted per upload image.
pub const ANNOUNCED: [&str; 3] = ["image.registered", "image.ready", "image.published"];

/// Announcements whose raw duplicates would be counted but not failed (without `--strict`).
/// None since tag-lineage and publish claim their announcements (shared::claim): the same
/// `image.registered` delivered K times at once to tag-lineage, or `image.ready` K times at once
/// to publish, now gives one message, and a duplicate fails the run.
pub const KNOWN_OPEN: [&str; 0] = [];

/// A failed invariant (or a known open issue seen) with its evidence.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Which.
    pub invariant: String,
    /// What shows it.
    pub evidence: Vec<String>,
}

/// One event type's announcements over the uploads' images.
#[derive(Debug, Clone, Default)]
pub struct Announced {
    /// Messages sent.
    pub messages: usize,
    /// Images with none.
    pub missing: usize,
    /// Images with more than one message.
    pub duplicated: usize,
    /// Messages beyond one per image.
    pub excess: usize,
    /// Most messages for one image.
    pub max: usize,
    /// Images with more than one distinct `dedup_key`.
    pub keys_over_one: usize,
}

/// The figures of one run.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// AMIs per upload → uploads.
    pub amis_per_upload: BTreeMap<usize, usize>,
    /// Import tasks per upload → uploads.
    pub imports_per_upload: BTreeMap<usize, usize>,
    /// Copies per (image, region) → pairs.
    pub copies_per_region: BTreeMap<usize, usize>,
    /// Managed snapshots no image uses, once converged.
    pub orphan_snapshots: usize,
    /// Per announced type.
    pub announced: BTreeMap<&'static str, Announced>,
    /// Every message type the topic carried → count.
    pub messages: BTreeMap<String, usize>,
    /// Images whose lineage was compared with the reference (snapshots included).
    pub lineage_compared: usize,
    /// Of those, differing.
    pub lineage_differing: usize,
    /// Images cleanup should remove / removed / removed wrongly / missed; snapshots removed.
    pub cleanup: (usize, usize, usize, usize, usize),
    /// Pipeline schedule rounds run (the last one quiet if converged).
    pub rounds: usize,
    /// The last round that still changed something, sent something or had inputs (0: the
    /// events alone finished the work).
    pub rounds_needed: usize,
    /// Cleanup's rounds.
    pub cleanup_rounds: usize,
    /// With crashes or lost responses: SNS calls that took effect and then failed (the extra
    /// raw messages allowed).
    pub after_fired_sns: Option<u64>,
}

/// The outcome of one run.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Failed invariants.
    pub failures: Vec<Finding>,
    /// Seen and counted, not failed (failures with `--strict`): raw duplicates of the types in
    /// [`KNOWN_OPEN`], invocations that failed without an injected fault.
    pub known_open: Vec<Finding>,
    /// Invariants checked.
    pub checked: Vec<String>,
    /// The figures.
    pub figures: Figures,
}

impl Verdict {
    fn check(&mut self, invariant: &str, evidence: Vec<String>) {
        self.checked.push(invariant.to_owned());
        if !evidence.is_empty() {
            self.failures.push(Finding {
                invariant: invariant.to_owned(),
                evidence,
            });
        }
    }

    /// No invariant failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Names of a run's images and snapshots: `u03` (upload 3's AMI), `u03@us-west-2` (its copy),
/// `u03@us-west-2/derived` (the image made from an instance of that copy), `…/instance`,
/// `<image name>/snapshot`.
pub fn names(run: &Run, inv: &Inventory) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let mut images: Vec<(String, &Image)> = Vec::new();
    for (u, source) in sources(run, inv) {
        let name = run.uploads[u].name();
        images.push((name.clone(), source));
        for region in COPY_REGIONS {
            for copy in inv.images_in(region) {
                if copy.tags.get(PUBLISH_SOURCE) == Some(&source.id) {
                    images.push((format!("{name}@{region}"), copy));
                }
            }
        }
    }
    for d in &run.derived {
        let name = format!("{}@{}/derived", run.uploads[d.upload].name(), d.region);
        names.insert(
            d.instance.clone(),
            format!("{}@{}/instance", run.uploads[d.upload].name(), d.region),
        );
        if let Some(i) = inv.images.get(&(d.region.clone(), d.image.clone())) {
            images.push((name, i));
        }
    }
    for (name, image) in images {
        for (k, s) in image.snapshot_ids.iter().enumerate() {
            names.insert(
                s.clone(),
                format!(
                    "{name}/snapshot{}",
                    if k == 0 { String::new() } else { k.to_string() }
                ),
            );
        }
        names.entry(image.id.clone()).or_insert(name);
    }
    names
}

/// Each upload's AMIs in the home region (not copies): (upload index, image).
pub fn sources<'a>(run: &Run, inv: &'a Inventory) -> Vec<(usize, &'a Image)> {
    let mut out = Vec::new();
    for u in &run.uploads {
        let uri = run.source_uri(u.index);
        for i in inv.images_in(REGION) {
            if i.tags.get(SOURCE_URI) == Some(&uri)
                && !i.tags.contains_key(PUBLISH_SOURCE)
                && i.source_image_id.is_none()
            {
                out.push((u.index, i));
            }
        }
    }
    out
}

/// The compared lineage of every named image and its first snapshot, ids replaced by names.
pub fn lineage(run: &Run, inv: &Inventory) -> BTreeMap<String, BTreeMap<String, String>> {
    let names = names(run, inv);
    let mut by_len: Vec<(&String, &String)> = names.iter().collect();
    by_len.sort_by_key(|(id, _)| std::cmp::Reverse(id.len()));
    let project = |tags: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        COMPARED
            .iter()
            .filter_map(|k| tags.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .map(|(k, mut v)| {
                v = v.replace(&run.bucket, "<bucket>");
                for o in &run.objects {
                    if let Some(version) = &o.version {
                        v = v.replace(version.as_str(), "<version>");
                    }
                }
                for (id, name) in &by_len {
                    v = v.replace(id.as_str(), name);
                }
                (k, v)
            })
            .collect()
    };
    let mut out = BTreeMap::new();
    for ((region, id), image) in &inv.images {
        let Some(name) = names.get(id) else { continue };
        if name.contains("/snapshot") {
            continue;
        }
        out.insert(name.clone(), project(&image.tags));
        if let Some(s) = image.snapshot_ids.first()
            && let Some(snap) = inv.snapshots.get(&(region.clone(), s.clone()))
        {
            out.insert(format!("{name}/snapshot"), project(&snap.tags));
        }
    }
    out
}

/// Checks every invariant of `run` against the fault-free `reference` lineage.
pub fn verdict(
    run: &Run,
    reference: &BTreeMap<String, BTreeMap<String, String>>,
    strict: bool,
) -> Verdict {
    let mut v = Verdict::default();
    let inv = &run.at_convergence;
    uploads(run, inv, &mut v);
    copies(run, inv, &mut v);
    orphans(inv, &mut v);
    announcements(run, inv, strict, &mut v);
    published(run, inv, &mut v);
    lineage_against(run, inv, reference, &mut v);
    cleanup(run, &mut v);
    uninjected(run, strict, &mut v);
    v.figures.rounds = run.rounds.len();
    v.figures.rounds_needed = run
        .rounds
        .iter()
        .filter(|l| l.inputs > 0 || !l.changes.is_empty() || l.produced > 0)
        .map(|l| l.round)
        .max()
        .unwrap_or(0);
    v.figures.cleanup_rounds = run.cleanup_rounds.len();
    let last = |r: &[super::pipeline::RoundLog]| {
        r.last()
            .map(|l| {
                format!(
                    "round {}: {} inputs, changes {:?}, {} messages sent, {} in flight",
                    l.round, l.inputs, l.changes, l.produced, l.in_flight
                )
            })
            .unwrap_or_default()
    };
    v.check(
        "the pipeline converges (a round without faults changes nothing, sends nothing)",
        if run.converged {
            vec![]
        } else {
            vec![format!(
                "not quiet after {} rounds; {}",
                run.rounds.len(),
                last(&run.rounds)
            )]
        },
    );
    v.check(
        "cleanup converges (a run changes nothing)",
        if run.cleanup_converged {
            vec![]
        } else {
            vec![format!(
                "not quiet after {} runs; {}",
                run.cleanup_rounds.len(),
                last(&run.cleanup_rounds)
            )]
        },
    );
    v
}

fn uploads(run: &Run, inv: &Inventory, v: &mut Verdict) {
    let srcs = sources(run, inv);
    let mut bad = Vec::new();
    let mut bad_imports = Vec::new();
    for u in &run.uploads {
        let mine: Vec<&str> = srcs
            .iter()
            .filter(|(i, _)| *i == u.index)
            .map(|(_, img)| img.id.as_str())
            .collect();
        *v.figures.amis_per_upload.entry(mine.len()).or_default() += 1;
        let available = srcs
            .iter()
            .filter(|(i, img)| *i == u.index && img.state == "available")
            .count();
        if mine.len() != 1 || available != 1 {
            bad.push(format!(
                "{} ({}): {} AMIs {mine:?}, {available} available",
                u.name(),
                u.key,
                mine.len()
            ));
        }
        let tasks: Vec<&str> = inv
            .tasks
            .values()
            .filter(|t| t.key.as_deref() == Some(u.key.as_str()))
            .map(|t| t.id.as_str())
            .collect();
        *v.figures.imports_per_upload.entry(tasks.len()).or_default() += 1;
        let expected = usize::from(u.kind.imported());
        if tasks.len() != expected {
            bad_imports.push(format!(
                "{} ({:?}): {} import tasks {tasks:?}, expected {expected}",
                u.name(),
                u.kind,
                tasks.len()
            ));
        }
    }
    v.check("exactly one AMI per upload", bad);
    v.check(
        "exactly one import per imported upload, none for the fast path",
        bad_imports,
    );
}

fn copies(run: &Run, inv: &Inventory, v: &mut Verdict) {
    let mut bad = Vec::new();
    let srcs = sources(run, inv);
    let ids: BTreeSet<&str> = srcs.iter().map(|(_, i)| i.id.as_str()).collect();
    for (u, source) in &srcs {
        for region in COPY_REGIONS {
            let found: Vec<String> = inv
                .images_in(region)
                .filter(|c| c.tags.get(PUBLISH_SOURCE) == Some(&source.id))
                .map(|c| format!("{} {}", c.id, c.state))
                .collect();
            *v.figures.copies_per_region.entry(found.len()).or_default() += 1;
            if found.len() != 1 || !found[0].ends_with("available") {
                bad.push(format!(
                    "{} {} in {region}: {found:?}",
                    run.uploads[*u].name(),
                    source.id
                ));
            }
        }
    }
    for region in COPY_REGIONS {
        for c in inv.images_in(region) {
            if let Some(s) = c.tags.get(PUBLISH_SOURCE)
                && !ids.contains(s.as_str())
            {
                bad.push(format!(
                    "{} in {region} is a copy of {s}, not of an upload's AMI",
                    c.id
                ));
            }
        }
    }
    v.check(
        "exactly one available copy per (image, region), no stray copy",
        bad,
    );
}

fn orphans(inv: &Inventory, v: &mut Verdict) {
    let used: BTreeSet<Key> = inv
        .images
        .iter()
        .flat_map(|((r, _), i)| i.snapshot_ids.iter().map(move |s| (r.clone(), s.clone())))
        .collect();
    let mut bad: Vec<String> = inv
        .snapshots
        .iter()
        .filter(|(k, s)| {
            s.tags.get(MANAGED).map(String::as_str) == Some("true") && !used.contains(*k)
        })
        .map(|((r, id), s)| {
            format!(
                "snapshot {id} in {r} (managed, used by no image; tags {:?})",
                s.tags
            )
        })
        .collect();
    v.figures.orphan_snapshots = bad.len();
    for t in inv.tasks.values() {
        if t.status == ImportStatus::Completed
            && let Some(s) = &t.snapshot_id
            && !used.contains(&(REGION.to_owned(), s.clone()))
        {
            bad.push(format!(
                "import {} completed with {s}, which no image uses",
                t.id
            ));
        }
    }
    v.check("no orphan snapshot or import task once converged", bad);
}

/// One (type, image)'s messages: how many, their dedup keys, the phases that sent them.
type Tally = (usize, BTreeSet<String>, Vec<String>);

fn announcements(run: &Run, inv: &Inventory, strict: bool, v: &mut Verdict) {
    let srcs = sources(run, inv);
    let ids: BTreeSet<&str> = srcs.iter().map(|(_, i)| i.id.as_str()).collect();
    let mut per: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    let mut stray = Vec::new();
    let mut bad_types = Vec::new();
    for m in &run.messages {
        let t = m.body["event_type"].as_str().unwrap_or("?");
        *v.figures.messages.entry(t.to_owned()).or_default() += 1;
        let image = m.body["image_id"].as_str().unwrap_or("");
        if matches!(t, "image.failed" | "image.lineage-conflict") {
            bad_types.push(format!("{t} ({}): {}", m.phase, short(&m.body)));
        }
        if !ANNOUNCED.contains(&t) {
            continue;
        }
        let Some(image) = ids.get(image) else {
            stray.push(format!(
                "{t} for {image}, not an upload's AMI ({})",
                m.phase
            ));
            continue;
        };
        let key = m.body["dedup_key"].as_str().unwrap_or("").to_owned();
        let e = per.entry((t, image)).or_default();
        e.0 += 1;
        e.1.insert(key);
        e.2.push(m.phase.clone());
    }
    // After a crash or a lost response, announcements are at least once (with one dedup_key):
    // an SNS Publish that took effect and then failed is sent again by the retry. Extra raw
    // messages are allowed up to the number of such faults fired on SNS (the functions' only
    // SNS call is Publish); everything else stays exactly once.
    let after_faults = run.mode.rates().after();
    let allowed = run.after_fired("sns");
    let mut all_dups = Vec::new();
    let mut total_excess = 0;
    for t in ANNOUNCED {
        let mut a = Announced::default();
        let mut missing = Vec::new();
        let mut dups = Vec::new();
        let mut keys = Vec::new();
        for (u, img) in &srcs {
            let (n, k, phases) = per.get(&(t, img.id.as_str())).cloned().unwrap_or_default();
            a.messages += n;
            a.max = a.max.max(n);
            if n == 0 {
                a.missing += 1;
                // The upload's kind and the path its image took, so a missing announcement is
                // never attributed to the wrong path.
                missing.push(format!(
                    "{} ({:?}, {}) {}",
                    run.uploads[*u].name(),
                    run.uploads[*u].kind,
                    img.tags.get(UPLOAD_METHOD).map_or("?", String::as_str),
                    img.id
                ));
            }
            if n > 1 {
                a.duplicated += 1;
                a.excess += n - 1;
                dups.push(format!(
                    "{} {}: {t} x{n} (drained in {})",
                    run.uploads[*u].name(),
                    img.id,
                    phases.join(", ")
                ));
            }
            if k.len() > 1 {
                a.keys_over_one += 1;
                keys.push(format!(
                    "{} {}: dedup keys {k:?}",
                    run.uploads[*u].name(),
                    img.id
                ));
            }
        }
        total_excess += a.excess;
        v.figures.announced.insert(t, a);
        v.check(&format!("every upload's AMI announced {t}"), missing);
        v.check(&format!("one dedup_key per ({t}, image)"), keys);
        let invariant = format!("exactly one {t} per image (raw messages)");
        if after_faults {
            all_dups.extend(dups);
        } else if KNOWN_OPEN.contains(&t) && !strict {
            v.checked
                .push(format!("{invariant} [known open: counted, not failed]"));
            if !dups.is_empty() {
                v.known_open.push(Finding {
                    invariant,
                    evidence: dups,
                });
            }
        } else {
            v.check(&invariant, dups);
        }
    }
    if after_faults {
        v.figures.after_fired_sns = Some(allowed);
        let evidence = if total_excess as u64 > allowed {
            let mut e = vec![format!(
                "{total_excess} raw messages beyond one per (type, image), {allowed} SNS calls took effect and failed (crash or lost response)"
            )];
            e.extend(all_dups);
            e
        } else {
            Vec::new()
        };
        v.check(
            &format!(
                "raw messages beyond one per (type, image) ({total_excess}) at most the SNS Publish calls that took effect and failed ({allowed})"
            ),
            evidence,
        );
    }
    v.check(
        "no announcement about an image that is not an upload's AMI",
        stray,
    );
    v.check("no image.failed or image.lineage-conflict", bad_types);
}

/// Invocations that failed, and not because of an injected fault: Lambda's retries hid them
/// (the run converged), but each is a race or a refusal the reconcilers should not meet.
fn uninjected(run: &Run, strict: bool, v: &mut Verdict) {
    let mut evidence = Vec::new();
    for (fun, s) in run.stats() {
        if s.uninjected > 0 {
            evidence.push(format!(
                "{}: {} failed invocations without an injected fault, e.g. {}",
                fun.name(),
                s.uninjected,
                s.uninjected_samples
                    .first()
                    .map(String::as_str)
                    .unwrap_or("")
            ));
        }
    }
    let invariant = "no invocation fails but for an injected fault";
    if strict {
        v.check(invariant, evidence);
    } else {
        v.checked.push(format!(
            "{invariant} [counted, not failed: --strict fails it]"
        ));
        if !evidence.is_empty() {
            v.known_open.push(Finding {
                invariant: invariant.to_owned(),
                evidence,
            });
        }
    }
}

fn short(m: &Value) -> String {
    let mut s = m.to_string();
    if s.len() > 400 {
        s.truncate(400);
        s.push('…');
    }
    s
}

fn published(run: &Run, inv: &Inventory, v: &mut Verdict) {
    let mut bad = Vec::new();
    for (u, source) in sources(run, inv) {
        let state = source.tags.get(PUBLISH_STATE).map(String::as_str);
        if state != Some("published") {
            bad.push(format!(
                "{} {}: publish-state {state:?}",
                run.uploads[u].name(),
                source.id
            ));
        }
        for region in regions() {
            let image = if region == REGION {
                Some(source)
            } else {
                inv.images_in(region)
                    .find(|c| c.tags.get(PUBLISH_SOURCE) == Some(&source.id))
            };
            let Some(image) = image else { continue };
            let perms = inv
                .launch
                .get(&(region.to_owned(), image.id.clone()))
                .cloned()
                .unwrap_or_default();
            if !perms.iter().any(|p| p == SHARE_ACCOUNT) {
                bad.push(format!(
                    "{} {} in {region}: launch permissions {perms:?}",
                    run.uploads[u].name(),
                    image.id
                ));
            }
        }
    }
    v.check(
        "every upload published: state published, shared in every region",
        bad,
    );
}

fn lineage_against(
    run: &Run,
    inv: &Inventory,
    reference: &BTreeMap<String, BTreeMap<String, String>>,
    v: &mut Verdict,
) {
    let mine = lineage(run, inv);
    let mut bad = Vec::new();
    let names: BTreeSet<&String> = mine.keys().chain(reference.keys()).collect();
    for name in names {
        v.figures.lineage_compared += 1;
        match (mine.get(name), reference.get(name)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                v.figures.lineage_differing += 1;
                let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                let diffs: Vec<String> = keys
                    .into_iter()
                    .filter(|k| a.get(*k) != b.get(*k))
                    .map(|k| format!("{k}: {:?}, reference {:?}", a.get(k), b.get(k)))
                    .collect();
                bad.push(format!("{name}: {}", diffs.join("; ")));
            }
            (a, _) => {
                v.figures.lineage_differing += 1;
                bad.push(format!(
                    "{name}: {} in this run",
                    if a.is_some() { "only" } else { "missing" }
                ));
            }
        }
    }
    v.check("lineage identical to the fault-free reference", bad);
}

fn cleanup(run: &Run, v: &mut Verdict) {
    let mut legacy = run.legacy.clone();
    legacy.sort_by_key(|l| l.days);
    let expected: BTreeSet<String> = legacy
        .iter()
        .enumerate()
        .filter(|(n, l)| *n >= 2 && !l.protected && l.days >= 30)
        .map(|(_, l)| l.image.clone())
        .collect();
    let expected_snaps: BTreeSet<String> = legacy
        .iter()
        .filter(|l| expected.contains(&l.image))
        .map(|l| l.snapshot.clone())
        .collect();
    let gone = |a: &Inventory, b: &Inventory| -> (Vec<Key>, Vec<Key>) {
        (
            a.images
                .keys()
                .filter(|k| !b.images.contains_key(*k))
                .cloned()
                .collect(),
            a.snapshots
                .keys()
                .filter(|k| !b.snapshots.contains_key(*k))
                .cloned()
                .collect(),
        )
    };
    let (early_images, early_snaps) = gone(&run.before_cleanup, &run.after_deprecate);
    let mut bad: Vec<String> = early_images
        .iter()
        .chain(&early_snaps)
        .map(|(r, id)| format!("{id} in {r} removed by the first runs, within the grace period"))
        .collect();
    let (images, snaps) = gone(&run.at_convergence, &run.at_end);
    let removed: BTreeSet<String> = images.iter().map(|(_, id)| id.clone()).collect();
    let wrong: Vec<&String> = removed.difference(&expected).collect();
    let missed: Vec<&String> = expected.difference(&removed).collect();
    for id in &wrong {
        bad.push(format!(
            "image {id} removed, not a stale image of {}",
            super::pipeline::LEGACY_FAMILY
        ));
    }
    for id in &missed {
        bad.push(format!("stale image {id} not removed"));
    }
    for (r, s) in &snaps {
        if !expected_snaps.contains(s) {
            bad.push(format!("snapshot {s} in {r} removed, not a stale image's"));
        }
    }
    for s in &expected_snaps {
        if run.at_end.snapshots.keys().any(|(_, id)| id == s) {
            bad.push(format!("snapshot {s} of a removed image left"));
        }
    }
    v.figures.cleanup = (
        expected.len(),
        removed.len(),
        wrong.len(),
        missed.len(),
        snaps.len(),
    );
    v.check("cleanup removed exactly the stale images of the backdated family and their snapshots, nothing else", bad);
}
