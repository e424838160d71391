//! Walks `events/`: every sample is named `<function>.<scenario>.json`, parses as its function's
//! event, and runs through that function's real handler against the emulator (a fresh account
//! per function, nothing in it) with the outcome `events/README.md` documents for it — `ok:` with the
//! `/json/pointer` = `value` pairs the output must hold, or `error <errorType>` with the text the
//! message must contain. A file without a documented outcome, a documented file that is missing,
//! and an unknown function prefix all fail the test.

use serde_json::Value;
use shared::invocation::InvocationError;
use std::collections::BTreeMap;
use support::{TestAccount, UnderTest, World};

const FUNCTIONS: [&str; 4] = ["create-image", "tag-lineage", "publish", "cleanup"];

#[derive(Debug)]
enum Expect {
    Ok(Vec<(String, Value)>),
    Err {
        error_type: String,
        contains: Option<String>,
    },
}

/// The backtick-quoted pieces of a table cell, in order.
fn quoted(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// `events/README.md`'s tables: file → expected outcome.
fn expectations() -> BTreeMap<String, Expect> {
    let text = std::fs::read_to_string(support::repo_root().join("events/README.md"))
        .expect("events/README.md");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let (Some(file), Some(expected)) = (cells.first(), cells.last()) else {
            continue;
        };
        let file = quoted(file)[0].to_owned();
        let expected = expected.trim_end_matches('|').trim();
        let expect = if let Some(rest) = expected.strip_prefix("error ") {
            let q = quoted(rest);
            Expect::Err {
                error_type: q[0].to_owned(),
                contains: rest
                    .split_once("contains ")
                    .map(|(_, c)| quoted(c)[0].to_owned()),
            }
        } else {
            assert!(
                expected.starts_with("ok"),
                "{file}: outcome must start with ok or error: {expected}"
            );
            let q = quoted(expected);
            let pairs = q
                .chunks(2)
                .filter(|p| p.len() == 2 && p[0].starts_with('/'))
                .map(|p| {
                    let v = serde_json::from_str(p[1])
                        .unwrap_or_else(|_| Value::String(p[1].to_owned()));
                    (p[0].to_owned(), v)
                })
                .collect();
            Expect::Ok(pairs)
        };
        assert!(
            out.insert(file.clone(), expect).is_none(),
            "{file} documented twice"
        );
    }
    out
}

/// The uploads bucket the create-image samples name (the template's `UploadsBucket` here).
const SAMPLE_BUCKET: &str = "ami-pipeline-uploads-example";

/// One world per function, each in its own fresh account with nothing in it, the function
/// built once as the runtime builds it.
struct Worlds {
    create_image: World<create_image::Deps>,
    tag_lineage: World<tag_lineage::Deps>,
    publish: World<publish::Deps>,
    cleanup: World<cleanup::Deps>,
}

/// A world whose role is granted the bucket the samples name.
async fn world<F: UnderTest>(env: &[(&str, &str)]) -> World<F> {
    World::with_bucket(TestAccount::new().await, env, SAMPLE_BUCKET.to_owned()).await
}

impl Worlds {
    async fn new() -> Self {
        Worlds {
            create_image: world(&[]).await,
            tag_lineage: world(&[("VISIBILITY_WAIT_SECONDS", "0")]).await,
            publish: world(&[]).await,
            cleanup: world(&[]).await,
        }
    }

    /// Runs `event_text` through `function` as the Lambda runtime would (`shared::runner`),
    /// under the function's template role.
    async fn run(&self, function: &str, event_text: &str) -> Result<Value, InvocationError> {
        async fn json<F: UnderTest>(
            w: &World<F>,
            event_text: &str,
        ) -> Result<Value, InvocationError> {
            let out = w.invoke_text(event_text).await?;
            Ok(serde_json::to_value(out).expect("outputs serialize"))
        }
        match function {
            "create-image" => json(&self.create_image, event_text).await,
            "tag-lineage" => json(&self.tag_lineage, event_text).await,
            "publish" => json(&self.publish, event_text).await,
            "cleanup" => json(&self.cleanup, event_text).await,
            other => panic!("unknown function {other}"),
        }
    }
}

#[tokio::test]
async fn every_sample_event_runs_through_its_handler_with_its_documented_outcome() {
    let mut expected = expectations();
    let mut files: Vec<String> = std::fs::read_dir(support::repo_root().join("events"))
        .expect("events/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "only {} sample events", files.len());
    let w = Worlds::new().await;
    let mut failures = Vec::new();
    for file in &files {
        let function = FUNCTIONS
            .iter()
            .find(|f| file.starts_with(&format!("{f}.")))
            .unwrap_or_else(|| panic!("{file}: the prefix names no function of {FUNCTIONS:?}"));
        let Some(expect) = expected.remove(file) else {
            failures.push(format!("{file}: no outcome documented in events/README.md"));
            continue;
        };
        let text = std::fs::read_to_string(support::repo_root().join("events").join(file))
            .expect("read event");
        let got = w.run(function, &text).await;
        match (&expect, got) {
            (Expect::Ok(pairs), Ok(out)) => {
                for (ptr, want) in pairs {
                    let have = out.pointer(ptr);
                    if have != Some(want) {
                        failures.push(format!("{file}: {ptr} is {have:?}, documented {want}"));
                    }
                }
            }
            (
                Expect::Err {
                    error_type,
                    contains,
                },
                Err(e),
            ) => {
                if e.error_type() != error_type {
                    failures.push(format!(
                        "{file}: errorType {} ({e}), documented {error_type}",
                        e.error_type()
                    ));
                }
                if let Some(c) = contains
                    && !e.to_string().contains(c.as_str())
                {
                    failures.push(format!("{file}: error {e:?} lacks the documented {c:?}"));
                }
            }
            (Expect::Ok(_), Err(e)) => failures.push(format!(
                "{file}: failed with {}: {e}, documented ok",
                e.error_type()
            )),
            (Expect::Err { error_type, .. }, Ok(out)) => failures.push(format!(
                "{file}: succeeded ({out}), documented error {error_type}"
            )),
        }
    }
    for missing in expected.keys() {
        failures.push(format!(
            "{missing}: documented in events/README.md but not in events/"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
