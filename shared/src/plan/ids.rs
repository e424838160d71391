//! Validation of the identifiers users type: image, instance and snapshot ids, account ids,
//! organization / OU ARNs, and region names.
//!
//! Regions are checked against a fixed list of the AWS regions that exist (commercial, GovCloud
//! and China) so that a typo (`us-east1`) is refused instead of becoming an API call to a
//! region that does not exist — or, worse, a default region. A region AWS opens later needs a
//! line in [`KNOWN_REGIONS`].

/// Every AWS region this build knows (November 2026).
pub const KNOWN_REGIONS: [&str; 39] = [
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-west-1",
    "us-west-2",
    "eusc-de-east-1",
];

/// Most distinct regions a request may name (AWS has fewer in any partition; a longer list is
/// a mistake, refused before any call rather than run into the Lambda's timeout).
pub const MAX_REGIONS_PER_REQUEST: usize = 64;

/// Whether `region` is a region AWS has.
pub fn is_region(region: &str) -> bool {
    KNOWN_REGIONS.contains(&region)
}

/// The partition (`aws`, `aws-cn`, `aws-us-gov`, `aws-iso`, …) a region belongs to, by its
/// name: botocore's `data/partitions.json` gives each partition a `regionRegex`
/// (`^cn\-\w+\-\d+$` for aws-cn, `^us\-gov\-\w+\-\d+$` for aws-us-gov,
/// `^us\-iso\-…` aws-iso, `^us\-isob\-…` aws-iso-b, `^us\-isof\-…` aws-iso-f,
/// `^eu\-isoe\-…` aws-iso-e, `^eusc\-(de)\-…` aws-eusc); every other region is `aws`.
pub fn partition_of(region: &str) -> &'static str {
    const PREFIXES: [(&str, &str); 7] = [
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-isob-", "aws-iso-b"),
        ("us-isof-", "aws-iso-f"),
        ("us-iso-", "aws-iso"),
        ("eu-isoe-", "aws-iso-e"),
        ("eusc-", "aws-eusc"),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("aws", |(_, partition)| partition)
}

/// Whether a deployment in `home` (the function's own region) can work with `region`: it must be
/// a known region ([`is_region`]) of the same partition. Partitions are isolated: credentials,
/// ARNs and CopyImage do not cross them (AWS General Reference, "AWS partitions"; CopyImage
/// copies "within the same partition"), so a commercial deployment naming `cn-north-1` would
/// fail on every run. `Err` says why, naming the region and both partitions.
pub fn check_region(region: &str, home: &str) -> Result<(), String> {
    if !is_region(region) {
        return Err(format!("{region:?} is not an AWS region"));
    }
    let (theirs, ours) = (partition_of(region), partition_of(home));
    if theirs != ours {
        return Err(format!(
            "{region:?} is in partition {theirs}, not in this deployment's partition {ours} (region {home})"
        ));
    }
    Ok(())
}

fn hex_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        (rest.len() == 8 || rest.len() == 17)
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `ami-` + 8 or 17 lower-case hex digits.
pub fn is_image_id(s: &str) -> bool {
    hex_id(s, "ami-")
}

/// `i-` + 8 or 17 lower-case hex digits.
pub fn is_instance_id(s: &str) -> bool {
    hex_id(s, "i-")
}

/// `snap-` + 8 or 17 lower-case hex digits.
pub fn is_snapshot_id(s: &str) -> bool {
    hex_id(s, "snap-")
}

/// Twelve digits.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Why `arn` cannot be the KMS key the function's snapshots are encrypted with, None when it
/// can: a key ARN (`arn:<partition>:kms:<region>:<account>:key/<key id>`; StartSnapshot's
/// `KmsKeyArn` takes an ARN only, botocore's EBS model pattern
/// `arn:aws[a-z\-]*:kms:.*:[0-9]{12}:key/.*`), in `home`'s region when it is known (EBS encrypts
/// a snapshot with a key of its own region; an alias ARN is refused, as StartSnapshot refuses it).
pub fn kms_key_problem(arn: &str, home: Option<&str>) -> Option<String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Some(format!(
            "{arn:?} is not a KMS key ARN (arn:<partition>:kms:<region>:<account>:key/<key id>)"
        ));
    };
    let key_id = resource.strip_prefix("key/").unwrap_or_default();
    let key_id_ok = !key_id.is_empty()
        && key_id.len() <= 128
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if prefix != "arn"
        || !partition.starts_with("aws")
        || service != "kms"
        || !is_region(region)
        || !is_account_id(account)
        || !key_id_ok
    {
        return Some(format!(
            "{arn:?} is not a KMS key ARN (arn:<partition>:kms:<region>:<account>:key/<key id>; an alias is not accepted by StartSnapshot)"
        ));
    }
    if partition != partition_of(region) {
        return Some(format!(
            "{arn:?} names partition {partition}, but {region} is in {}",
            partition_of(region)
        ));
    }
    match home {
        Some(home) if home != region => Some(format!(
            "{arn:?} is a key of {region}; snapshots made in {home} need a key of {home}"
        )),
        _ => None,
    }
}

/// `arn:aws:organizations::<account>:organization/o-<10–32 lower-case alphanumerics>`.
pub fn is_organization_arn(s: &str) -> bool {
    let Some(rest) = org_arn_rest(s) else {
        return false;
    };
    rest.strip_prefix("organization/")
        .is_some_and(|id| org_id(id, "o-"))
}

/// `arn:aws:organizations::<account>:ou/o-<org id>/ou-<4–32 chars>-<8–32 chars>`.
pub fn is_ou_arn(s: &str) -> bool {
    let Some(rest) = org_arn_rest(s) else {
        return false;
    };
    let Some(path) = rest.strip_prefix("ou/") else {
        return false;
    };
    let mut parts = path.split('/');
    let (Some(org), Some(ou), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Some(ou) = ou.strip_prefix("ou-") else {
        return false;
    };
    let mut halves = ou.split('-');
    let (Some(a), Some(b), None) = (halves.next(), halves.next(), halves.next()) else {
        return false;
    };
    org_id(org, "o-") && alnum(a, 4, 32) && alnum(b, 8, 32)
}

fn org_arn_rest(s: &str) -> Option<&str> {
    let rest = ["arn:aws:", "arn:aws-us-gov:", "arn:aws-cn:"]
        .iter()
        .find_map(|p| s.strip_prefix(p))?;
    let rest = rest.strip_prefix("organizations::")?;
    let (account, rest) = rest.split_once(':')?;
    is_account_id(account).then_some(rest)
}

fn org_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|id| alnum(id, 10, 32))
}

fn alnum(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_keys_are_arns_of_the_functions_region() {
        let key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(kms_key_problem(key, Some("us-east-1")), None);
        assert_eq!(kms_key_problem(key, None), None);
        let mrk = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        assert_eq!(kms_key_problem(mrk, Some("eu-west-1")), None);
        let other_region = kms_key_problem(key, Some("eu-west-1")).unwrap_or_default();
        assert!(
            other_region.contains("a key of us-east-1"),
            "{other_region}"
        );
        for bad in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "alias/ami-pipeline",
            "arn:aws:kms:us-east-1:111122223333:alias/ami-pipeline",
            "arn:aws:kms:us-east-1:1111:key/1234",
            "arn:aws:s3:us-east-1:111122223333:key/1234",
            "arn:aws:kms:us-east-1:111122223333:key/",
            "arn:aws:kms:mars-1:111122223333:key/1234",
        ] {
            assert!(kms_key_problem(bad, None).is_some(), "{bad}");
        }
        let partition = kms_key_problem("arn:aws-cn:kms:us-east-1:111122223333:key/1234", None)
            .unwrap_or_default();
        assert!(partition.contains("partition aws-cn"), "{partition}");
    }

    #[test]
    fn ids_are_checked_for_shape() {
        assert!(is_image_id("ami-12345678"));
        assert!(is_image_id("ami-0123456789abcdef0"));
        assert!(!is_image_id("ami-0123456789ABCDEF0"));
        assert!(!is_image_id("ami-123"));
        assert!(!is_image_id("i-12345678"));
        assert!(is_instance_id("i-0123456789abcdef0"));
        assert!(is_snapshot_id("snap-0123456789abcdef0"));
        assert!(is_account_id("123456789012"));
        assert!(!is_account_id("12345678901"));
        assert!(!is_account_id("12345678901a"));
    }

    #[test]
    fn regions_must_exist() {
        assert!(is_region("us-east-1"));
        assert!(is_region("eu-central-2"));
        assert!(!is_region("us-east1"));
        assert!(!is_region("moon-1"));
        assert!(!is_region(""));
    }

    #[test]
    fn regions_must_be_in_the_deployments_partition() {
        assert_eq!(partition_of("us-east-1"), "aws");
        assert_eq!(partition_of("cn-north-1"), "aws-cn");
        assert_eq!(partition_of("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition_of("us-iso-east-1"), "aws-iso");
        assert_eq!(partition_of("us-isob-east-1"), "aws-iso-b");
        assert_eq!(partition_of("eusc-de-east-1"), "aws-eusc");
        assert!(check_region("eu-west-1", "us-east-1").is_ok());
        assert!(check_region("cn-northwest-1", "cn-north-1").is_ok());
        assert!(check_region("us-gov-east-1", "us-gov-west-1").is_ok());
        assert_eq!(
            check_region("cn-north-1", "us-east-1"),
            Err("\"cn-north-1\" is in partition aws-cn, not in this deployment's partition aws (region us-east-1)".into())
        );
        assert!(check_region("us-gov-west-1", "eu-west-1").is_err());
        assert!(check_region("us-east-1", "cn-north-1").is_err());
        assert_eq!(
            check_region("us-east1", "us-east-1"),
            Err("\"us-east1\" is not an AWS region".into())
        );
    }

    #[test]
    fn organization_and_ou_arns() {
        assert!(is_organization_arn(
            "arn:aws:organizations::123456789012:organization/o-abcde12345"
        ));
        assert!(!is_organization_arn(
            "arn:aws:organizations::123456789012:organization/o-abc"
        ));
        assert!(is_ou_arn(
            "arn:aws:organizations::123456789012:ou/o-abcde12345/ou-ab12-abcdefgh"
        ));
        assert!(!is_ou_arn(
            "arn:aws:organizations::123456789012:ou/o-abcde12345/ou-ab12"
        ));
        assert!(!is_ou_arn(
            "arn:aws:organizations::123456789012:organization/o-abcde12345"
        ));
    }
}
