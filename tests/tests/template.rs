//! `template.yaml` ↔ code: the template deploys exactly the crates under `functions/`, and sets
//! exactly the environment variables each function's `Config::vars()` reads — no more (a
//! variable nobody reads is a setting that silently does nothing), no fewer (a variable the code
//! reads and the template forgets falls back to its default without anyone noticing).

use saphyr::YamlOwned;
use std::collections::{BTreeMap, BTreeSet};
use support::roles::{template, yaml_at};

/// function directory name → the environment variables the template sets for it.
fn template_functions(t: &YamlOwned) -> BTreeMap<String, BTreeSet<String>> {
    let resources = yaml_at(t, &["Resources"])
        .and_then(YamlOwned::as_mapping)
        .unwrap_or_else(|| panic!("template.yaml has no Resources"));
    let mut out = BTreeMap::new();
    for (id, r) in resources {
        let str_at = |path: &[&str]| yaml_at(r, path).and_then(YamlOwned::as_str);
        if str_at(&["Type"]) != Some("AWS::Serverless::Function") {
            continue;
        }
        let code =
            str_at(&["Properties", "CodeUri"]).unwrap_or_else(|| panic!("{id:?} has no CodeUri"));
        let dir = code
            .strip_prefix("functions/")
            .unwrap_or_else(|| panic!("{id:?}: CodeUri {code} is not under functions/"))
            .trim_end_matches('/')
            .to_owned();
        assert_eq!(
            str_at(&["Metadata", "BuildProperties", "Binary"]),
            Some(dir.as_str()),
            "{id:?}: the binary built must be the crate's"
        );
        let vars = yaml_at(r, &["Properties", "Environment", "Variables"])
            .and_then(YamlOwned::as_mapping)
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
    let deployed: BTreeSet<String> = template_functions(template()).into_keys().collect();
    assert_eq!(deployed, dirs);
    let known: BTreeSet<String> = code_vars().into_keys().collect();
    assert_eq!(known, dirs, "this test must know every function's Config");
}

#[test]
fn each_function_gets_exactly_the_variables_its_config_reads() {
    let deployed = template_functions(template());
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

/// The `!Ref` reading the IAM tests rely on: each variable set to `!Ref <Parameter>` names that
/// parameter, a `!Ref` to a resource (the topic) or a plain value names none. If the YAML
/// reader lost CloudFormation's tags, every role would silently render with default parameters.
#[test]
fn roles_read_the_parameters_behind_each_ref() {
    use support::roles::{Function, parameters};
    let env = |name: &str| Some(format!("value-of-{name}"));
    let got = parameters(Function::Publish, &env);
    for (param, var) in [
        ("Public", "PUBLIC"),
        ("PublishRegions", "PUBLISH_REGIONS"),
        ("ShareAccounts", "SHARE_ACCOUNTS"),
    ] {
        assert_eq!(
            got.get(param).and_then(|v| v.as_str()),
            Some(format!("value-of-{var}").as_str()),
            "{param} <- {var}: {got:?}"
        );
    }
    assert!(
        !got.contains_key("Topic"),
        "Topic is a resource, not a parameter: {got:?}"
    );
    assert!(
        got.keys()
            .all(|k| yaml_at(template(), &["Parameters", k]).is_some()),
        "{got:?}"
    );
}
