//! Walks `events/`: every sample is named `<function>.<scenario>.json`, parses as its function's
//! event, and runs through that function's real handler against the emulator (a fresh account,
//! nothing in it) with the outcome `events/README.md` documents for it — `ok:` with the
//! `/json/pointer` = `value` pairs the output must hold, or `error <errorType>` with the text the
//! message must contain. A file without a documented outcome, a documented file that is missing,
//! and an unknown function prefix all fail the test.

use serde_json::Value;
use shared::invocation::InvocationError;
use std::collections::BTreeMap;
use support::TestAccount;
use support::roles::Function;

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

struct World {
    acct: TestAccount,
    topic: String,
}

impl World {
    fn env(&self, extra: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let mut m: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.insert("TOPIC_ARN".into(), self.topic.clone());
        m.insert("S3_FORCE_PATH_STYLE".into(), "true".into());
        move |k| m.get(k).cloned()
    }

    /// Runs `event_text` through `function` as the Lambda runtime would (`shared::runner`),
    /// under the function's template role.
    async fn run(&self, function: &str, event_text: &str) -> Result<Value, InvocationError> {
        fn json(v: Result<Value, serde_json::Error>) -> Value {
            v.expect("outputs serialize")
        }
        let a = &self.acct;
        let env = self.env(&[]);
        match function {
            "create-image" => a
                .invoke::<create_image::Deps>(
                    Function::CreateImage,
                    &env,
                    SAMPLE_BUCKET,
                    event_text,
                )
                .await
                .map(|o| json(serde_json::to_value(o))),
            "tag-lineage" => a
                .invoke::<tag_lineage::Deps>(
                    Function::TagLineage,
                    &self.env(&[("VISIBILITY_WAIT_SECONDS", "0")]),
                    SAMPLE_BUCKET,
                    event_text,
                )
                .await
                .map(|o| json(serde_json::to_value(o))),
            "publish" => a
                .invoke::<publish::Deps>(Function::Publish, &env, SAMPLE_BUCKET, event_text)
                .await
                .map(|o| json(serde_json::to_value(o))),
            "cleanup" => a
                .invoke::<cleanup::Deps>(Function::Cleanup, &env, SAMPLE_BUCKET, event_text)
                .await
                .map(|o| json(serde_json::to_value(o))),
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
    let acct = TestAccount::new().await;
    let (topic, _queue) = acct.topic_with_queue("ami-pipeline").await;
    let w = World { acct, topic };
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
