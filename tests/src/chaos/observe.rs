//! What the harness sees of AWS, read as the test's own identity (never faulted: the fault
//! rules name the functions' roles): every image, snapshot, launch permission and import task
//! of the account in the run's regions, compared round to round to tell when nothing changes.

use crate::TestAccount;
use serde::Serialize;
use shared::aws::ec2;
use shared::model::{Image, ImportStatus, ImportTask, Snapshot};
use std::collections::BTreeMap;

/// `(region, id)`.
pub type Key = (String, String);

/// An EC2 client of the test's identity in `region` for the harness's own reads and fixtures,
/// with a retry partition of its own: the SDK keeps the adaptive retry mode's client-side rate
/// limiter and the retry quota per partition for the whole process (aws-smithy-runtime's
/// `CLIENT_RATE_LIMITER` and `TOKEN_BUCKET`), so with the default partition (`ec2-<region>`) the
/// harness's observations would wait behind the throttling the faults cause the functions.
pub fn observer(acct: &TestAccount, region: &str) -> aws_sdk_ec2::Client {
    use aws_sdk_ec2::config::retry::{RetryConfig, RetryPartition};
    let conf = aws_sdk_ec2::config::Builder::from(&acct.sdk)
        .region(aws_sdk_ec2::config::Region::new(region.to_owned()))
        .retry_config(RetryConfig::standard().with_max_attempts(5))
        .retry_partition(RetryPartition::new(format!("chaos-observer-{region}")))
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// The account's resources at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// Images by (region, id).
    pub images: BTreeMap<Key, Image>,
    /// Launch permissions of each image (account ids, `all`, …), sorted.
    pub launch: BTreeMap<Key, Vec<String>>,
    /// Snapshots by (region, id).
    pub snapshots: BTreeMap<Key, Snapshot>,
    /// Import tasks (the home region's).
    pub tasks: BTreeMap<String, ImportTask>,
}

impl Inventory {
    /// Reads everything in `regions` (the first is the home region, where imports run).
    pub async fn read(acct: &TestAccount, regions: &[&str]) -> Inventory {
        let mut inv = Inventory::default();
        for region in regions {
            let c = observer(acct, region);
            let images = ec2::describe_own_images(&c, &[])
                .await
                .unwrap_or_else(|e| panic!("inventory: images in {region}: {e}"));
            for image in images {
                let key = ((*region).to_owned(), image.id.clone());
                let mut perms = ec2::launch_permissions(&c, &image.id)
                    .await
                    .unwrap_or_default();
                perms.sort();
                inv.launch.insert(key.clone(), perms);
                inv.images.insert(key, image);
            }
            let snapshots = ec2::describe_own_snapshots_filtered(&c, &[])
                .await
                .unwrap_or_else(|e| panic!("inventory: snapshots in {region}: {e}"));
            for s in snapshots {
                inv.snapshots
                    .insert(((*region).to_owned(), s.id.clone()), s);
            }
        }
        let home = observer(acct, regions[0]);
        for t in ec2::describe_import_tasks(&home, &[])
            .await
            .unwrap_or_else(|e| panic!("inventory: import tasks: {e}"))
        {
            inv.tasks.insert(t.id.clone(), t);
        }
        inv
    }

    /// Work still moving on AWS's side: imports running, images or snapshots pending.
    pub fn in_flight(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.tasks.values() {
            if matches!(t.status, ImportStatus::Active | ImportStatus::Unknown(_)) {
                out.push(format!("import {} {:?}", t.id, t.status));
            }
        }
        for ((region, id), i) in &self.images {
            if i.state == "pending" {
                out.push(format!("image {id} in {region} pending"));
            }
        }
        for ((region, id), s) in &self.snapshots {
            if s.state.as_deref() == Some("pending") {
                out.push(format!("snapshot {id} in {region} pending"));
            }
        }
        out
    }

    /// The images of `region`.
    pub fn images_in<'a>(&'a self, region: &'a str) -> impl Iterator<Item = &'a Image> + 'a {
        self.images
            .iter()
            .filter(move |((r, _), _)| r == region)
            .map(|(_, i)| i)
    }

    /// Which resources differ from `before` (ids, at most `limit` of them), for the report.
    pub fn changes_since(&self, before: &Inventory, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        diff(&before.images, &self.images, "image", &mut out);
        diff(
            &before.launch,
            &self.launch,
            "launch permissions of",
            &mut out,
        );
        diff(&before.snapshots, &self.snapshots, "snapshot", &mut out);
        let tasks = |i: &Inventory| -> BTreeMap<Key, (ImportStatus, Option<String>)> {
            i.tasks
                .iter()
                .map(|(id, t)| {
                    (
                        (String::new(), id.clone()),
                        (t.status.clone(), t.snapshot_id.clone()),
                    )
                })
                .collect()
        };
        diff(&tasks(before), &tasks(self), "import task", &mut out);
        out.truncate(limit);
        out
    }
}

fn diff<V: PartialEq>(
    a: &BTreeMap<Key, V>,
    b: &BTreeMap<Key, V>,
    what: &str,
    out: &mut Vec<String>,
) {
    for (k, v) in b {
        match a.get(k) {
            None => out.push(format!("{what} {} in {} appeared", k.1, k.0)),
            Some(old) if old != v => out.push(format!("{what} {} in {} changed", k.1, k.0)),
            Some(_) => {}
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        out.push(format!("{what} {} in {} disappeared", k.1, k.0));
    }
}
