"""Fidelity extensions of moto's EC2 emulation for the ami-pipeline tests.

moto 5.2.5 lacks or stubs the AMI operations the pipeline depends on (ImportSnapshot,
RegisterImage's block device mappings, deprecation, block public access, pagination, ...; see
/work/shared/reference/emulator.md). ``apply_extensions()`` patches moto's EC2 backend and
response classes in the current process; ``python -m ami_emulator`` applies them and then serves
moto on one port, together with the control endpoints of ``ami_emulator.control``.

Modules:
  common          shared lock, per-account config, per account+region state, pagination
  disk_images     RAW / VMDK / VHD probing for ImportSnapshot
  image_references DescribeImageReferences (instances, launch templates, SSM parameters)
  import_snapshot ImportSnapshot, DescribeImportSnapshotTasks
  images          RegisterImage, DescribeImages, CopyImage, DeregisterImage, image attributes,
                  deprecation, image block public access, deregistration protection
  snapshots       DeleteSnapshot in-use check, DescribeSnapshots owners/paging,
                  ModifySnapshotAttribute structured form
  tags            CreateTags / DeleteTags / DescribeTags on import-snap task ids
  ebs_direct      the EBS direct APIs (StartSnapshot ... ListChangedBlocks) on real EC2 snapshots:
                  checksums, ClientToken, Timeout, pending-snapshot quota, block storage
  s3_checksums    S3 object checksums: verification (BadDigest), multipart composite checksums,
                  ListParts / HeadObject / GetObjectAttributes checksum fields
  s3_ranges       ranged GetObject reads only the range (moto copies the whole object)
  instances       DescribeInstances paging counted in instances
  launch_templates DescribeLaunchTemplateVersions (account-wide $Latest/$Default, filters,
                  paging), DescribeLaunchTemplates paging
  fast_tags       per-resource tag lookups without scanning the tag store (speed only)
  fast_dispatch   moto's per-request dispatch lookups memoized (speed only)
  fast_http       request header blocks parsed without the email package (speed only)
  fast_serialize  moto's response serializer: member names and transformers kept (speed only)
  image_index     the ``amis`` store with a snapshot -> images index (speed only)
  faults          per-account fault injection (WSGI middleware) and its rule store
  api_rules       parameter rules of the EC2 reference moto does not enforce (gate api_rules):
                  TagSpecifications types per operation, tag limits, enums, required members,
                  documented lengths/ranges, filter names (filter_names)
  filter_names    each Describe operation's documented filter names (botocore model): unknown
                  name -> AWS's InvalidParameterValue; a documented one the emulator cannot apply
                  (moto's FilterNotImplementedError, silently ignored names) -> a clear 400
  rate_limits     EC2 request throttling (RequestLimitExceeded token buckets), opt-in per account
  consistency     eventual consistency of images, snapshots and their tags, opt-in per account
  request_counts  per-account AWS request counts by service:action (fed by the faults middleware)
  iam             IAM identity-policy evaluation of restricted roles (gate iam): evaluator,
                  request -> authorization checks, denials log
  sam_policies    SAM template -> each function role's identity policies (for iam)
  control         /ami-pipeline-emulator/* control endpoints (WSGI middleware)
"""

from __future__ import annotations

import threading

EXPECTED_MOTO_VERSION = "5.2.5"

_applied = False
_apply_lock = threading.Lock()


def apply_extensions() -> None:
    """Patch moto (idempotent). Must run in the server process before requests arrive."""
    global _applied
    with _apply_lock:
        if _applied:
            return
        import moto

        if moto.__version__ != EXPECTED_MOTO_VERSION:
            raise RuntimeError(
                f"ami_emulator patches moto internals and was written for moto "
                f"{EXPECTED_MOTO_VERSION}, but moto {moto.__version__} is installed"
            )
        from . import s3_checksums

        s3_checksums.install()
        from . import s3_conditional

        s3_conditional.install()
        from . import s3_ranges

        s3_ranges.install()
        from . import fast_dispatch, fast_tags, image_index, image_references, images, import_snapshot, instances, launch_templates, snapshots, tags

        fast_dispatch.install()
        from . import fast_http, fast_serialize

        fast_http.install()
        fast_serialize.install()
        from . import filter_names

        filter_names.install()
        fast_tags.install()
        # Before consistency, which keeps the snapshot index when it wraps the ``amis`` store.
        image_index.install()
        snapshots.install()
        images.install()
        image_references.install()
        import_snapshot.install()
        tags.install()
        instances.install()
        launch_templates.install()
        from . import ebs_direct

        ebs_direct.install()
        from . import api_rules

        api_rules.install()
        # After the modules above: consistency wraps their Describe handlers and get_tags.
        from . import consistency, rate_limits

        consistency.install()
        rate_limits.install()
        from . import iam

        iam.install()
        _applied = True
