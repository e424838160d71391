//! `template.yaml` ↔ code: the template deploys exactly the crates under `functions/`, and sets
//! exactly the environment variables each function's `Config::vars()` reads — no more (a
//! variable nobody reads is a setting that silently does nothing), no fewer (a variable the code
//! reads and the template forgets falls back to its default without anyone noticing).

use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

fn template() -> Value {
    let path = support::repo_root().join("template.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("template.yaml is not YAML: {e}"))
}

/// function directory name → the environment variables the template sets for it.
fn template_functions(t: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let resources = t["Resources"]
        .as_mapping()
        .unwrap_or_else(|| panic!("template.yaml has no Resources"));
    let mut out = BTreeMap::new();
    for (id, r) in resources {
        if r["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let code = r["Properties"]["CodeUri"]
            .as_str()
            .unwrap_or_else(|| panic!("{id:?} has no CodeUri"));
        let dir = code
            .strip_prefix("functions/")
            .unwrap_or_else(|| panic!("{id:?}: CodeUri {code} is not under functions/"))
            .trim_end_matches('/')
            .to_owned();
        assert_eq!(
            r["Metadata"]["BuildProperties"]["Binary"].as_str(),
            Some(dir.as_str()),
            "{id:?}: the binary built must be the crate's"
        );
        let vars = r["Properties"]["Environment"]["Variables"]
            .as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            out.insert(dir.clone(), vars).is_none(),
            "two functions deploy {dir}"
        );
    }
    out
}

fn code_vars() -> BTreeMap<String, BTreeSet<String>> {
    let set = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
    BTreeMap::from([
        ("create-image".to_owned(), set(create_image::Config::vars())),
        ("tag-lineage".to_owned(), set(tag_lineage::Config::vars())),
        ("publish".to_owned(), set(publish::Config::vars())),
        ("cleanup".to_owned(), set(cleanup::Config::vars())),
    ])
}

#[test]
fn the_template_deploys_exactly_the_function_crates() {
    let dirs: BTreeSet<String> = std::fs::read_dir(support::repo_root().join("functions"))
        .expect("functions/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let deployed: BTreeSet<String> = template_functions(&template()).into_keys().collect();
    assert_eq!(deployed, dirs);
    let known: BTreeSet<String> = code_vars().into_keys().collect();
    assert_eq!(known, dirs, "this test must know every function's Config");
}

#[test]
fn each_function_gets_exactly_the_variables_its_config_reads() {
    let deployed = template_functions(&template());
    for (function, wanted) in code_vars() {
        let set = deployed
            .get(&function)
            .unwrap_or_else(|| panic!("{function} is not in template.yaml"));
        let missing: Vec<_> = wanted.difference(set).collect();
        let unread: Vec<_> = set.difference(&wanted).collect();
        assert!(
            missing.is_empty() && unread.is_empty(),
            "{function}: read by the code but not set by the template: {missing:?}; set by the template but read by nobody: {unread:?}"
        );
    }
}
