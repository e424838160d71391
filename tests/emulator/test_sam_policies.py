"""``POST /ami-pipeline-emulator/iam/template-roles``: a SAM template's function roles, with the
policies SAM gives them (``ami_emulator/sam_policies.py``), enforced by the ``iam`` gate.

Written from the SAM specification (``AWS::Serverless::Function`` Policies, policy templates as
``samtranslator/policy_templates_data/policy_templates.json`` defines them, the role SAM
generates: ``<Function>Role`` with AWSLambdaBasicExecutionRole and the EventInvokeConfig
destination policy) and CloudFormation's intrinsic functions. The last part runs the real
``template.yaml``'s roles against the emulator with boto3.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from ami_emulator import sam_policies
from conftest import Account, control_call
from emu_helpers import aws_error, make_snapshot, register, tags_of

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
FUNCTIONS = ("CreateImageFunction", "TagLineageFunction", "PublishFunction", "CleanupFunction")
MANAGED = [{"Key": "ami-pipeline:managed", "Value": "true"}]


class Pipeline:
    """The template's resources in one test account (bucket, topic, queue) and its roles."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.bucket = account.bucket("uploads")
        self.topic = account.client("sns").create_topic(Name="ami-pipeline")["TopicArn"]
        self.queue_arn = f"arn:aws:sqs:us-east-1:{account.id}:ami-pipeline-dlq"
        self.resources = {
            "UploadsBucket": {"Ref": self.bucket},
            "Topic": {"Ref": self.topic},
            "DeadLetterQueue": {"Ref": f"https://sqs.us-east-1.amazonaws.com/{account.id}/ami-pipeline-dlq", "Arn": self.queue_arn},
            "ImportRole": {"Ref": "vmimport"},
            "StateBucket": {"Ref": f"ami-pipeline-state-{account.id}"},
        }

    def render(self, parameters: dict[str, Any] | None = None, **fields: Any) -> tuple[int, dict[str, Any]]:
        payload = {
            "account_id": self.account.id,
            "region": "us-east-1",
            "template_path": str(TEMPLATE),
            "parameters": parameters or {},
            "resources": self.resources,
            **fields,
        }
        return control_call(self.account.endpoint, "iam/template-roles", payload)

    def policies(self, role: str) -> dict[str, Any]:
        status, body = control_call(self.account.endpoint, f"iam/role-policies?account_id={self.account.id}&role_name={role}", method="GET")
        assert status == 200, body
        return body

    def role(self, function: str) -> Account:
        return as_role(self.account, f"{function}Role")


def as_role(account: Account, role: str) -> Account:
    view = Account.__new__(Account)
    view.endpoint, view.id, view._clients = account.endpoint, account.id, {}
    sts = boto3.client("sts", endpoint_url=account.endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account.id}:role/{role}", RoleSessionName="sam-test")["Credentials"]
    view._creds = {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }
    return view


@pytest.fixture
def pipeline(account: Account) -> Pipeline:
    return Pipeline(account)


def _statements(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for document in documents:
        statements = document["Statement"]
        out.extend(statements if isinstance(statements, list) else [statements])
    return out


def _intrinsics(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [k for k in node if k == "Ref" or k.startswith("Fn::")] + [x for v in node.values() for x in _intrinsics(v)]
    if isinstance(node, list):
        return [x for v in node for x in _intrinsics(v)]
    return ["${"] if isinstance(node, str) and "${" in node else []


# ============================================================================ the real template


def test_every_function_gets_its_role_with_fully_resolved_policies(pipeline):
    status, body = pipeline.render()
    assert status == 200, body
    assert body["account_id"] == pipeline.account.id and body["region"] == "us-east-1"
    assert body["roles"].keys() == {f"{f}Role" for f in FUNCTIONS}
    for function in FUNCTIONS:
        role = f"{function}Role"
        assert body["roles"][role]["function"] == function
        stored = pipeline.policies(role)
        assert stored["statements"] == body["roles"][role]["statements"] == len(_statements(stored["policies"]))
        assert _intrinsics(stored["policies"]) == [], role
        statements = _statements(stored["policies"])
        # What SAM adds itself: AWSLambdaBasicExecutionRole and the on-failure destination.
        assert {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"], "Resource": "*"} in statements
        assert {"Action": "sqs:SendMessage", "Effect": "Allow", "Resource": pipeline.queue_arn} in statements
        # SNSPublishMessagePolicy, expanded with the topic's name in this account and region.
        assert {"Effect": "Allow", "Action": ["sns:Publish"], "Resource": pipeline.topic} in statements
    create_image = _statements(pipeline.policies("CreateImageFunctionRole")["policies"])
    s3_read = next(s for s in create_image if "s3:ListBucket" in s.get("Action", []))
    assert s3_read["Action"] == ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation", "s3:GetObjectVersion", "s3:GetLifecycleConfiguration"]
    assert s3_read["Resource"] == [f"arn:aws:s3:::{pipeline.bucket}", f"arn:aws:s3:::{pipeline.bucket}/*"]
    import_task = next(s for s in create_image if s.get("Sid") == "ImportSnapshotTaggedManaged")
    assert import_task["Resource"] == f"arn:aws:ec2:us-east-1:{pipeline.account.id}:import-snapshot-task/*"


def test_a_condition_adds_or_drops_its_statement_with_the_parameter(pipeline):
    status, body = pipeline.render()
    assert status == 200, body
    without = body["roles"]["PublishFunctionRole"]["statements"]
    assert not [s for s in _statements(pipeline.policies("PublishFunctionRole")["policies"]) if s.get("Sid") == "NeverCopyIntoDeniedRegions"]

    status, body = pipeline.render({"PublishDenyRegions": "eu-west-1,eu-west-2"})
    assert status == 200, body
    assert body["roles"]["PublishFunctionRole"]["statements"] == without + 1
    deny = [s for s in _statements(pipeline.policies("PublishFunctionRole")["policies"]) if s.get("Sid") == "NeverCopyIntoDeniedRegions"]
    assert deny == [
        {
            "Sid": "NeverCopyIntoDeniedRegions",
            "Effect": "Deny",
            "Action": "ec2:CopyImage",
            "Resource": ["arn:aws:ec2:*::image/*", "arn:aws:ec2:*::snapshot/*"],
            "Condition": {"StringEquals": {"ec2:Region": ["eu-west-1", "eu-west-2"]}},
        }
    ]
    # ForeignSelectors: the cleanup role's unconditioned statement appears only with it.
    status, body = pipeline.render({"ForeignSelectors": "name:legacy-*"})
    cleanup = _statements(pipeline.policies("CleanupFunctionRole")["policies"])
    assert [s["Sid"] for s in cleanup if s.get("Sid") == "RemoveSelectedForeignImages"] == ["RemoveSelectedForeignImages"]


def test_a_missing_resource_or_unknown_parameter_is_refused(pipeline):
    del pipeline.resources["DeadLetterQueue"]
    status, body = pipeline.render()
    assert status == 400 and "DeadLetterQueue" in body["error"] and "Arn" in body["error"], body
    pipeline.resources["DeadLetterQueue"] = {"Ref": "https://sqs.us-east-1.amazonaws.com/1/q"}
    status, body = pipeline.render()
    assert status == 400 and "DeadLetterQueue (AWS::SQS::Queue): Fn::GetAtt Arn" in body["error"], body
    pipeline.resources["DeadLetterQueue"]["Arn"] = pipeline.queue_arn
    status, body = pipeline.render({"NoSuchParameter": "x"})
    assert status == 400 and "NoSuchParameter" in body["error"], body
    status, body = pipeline.render(template_path="relative/template.yaml")
    assert status == 400 and "absolute path" in body["error"], body
    status, body = pipeline.render(extra_field=1)
    assert status == 400 and "unknown fields" in body["error"], body
    # Nothing half-registered by the refused calls.
    status, _ = control_call(pipeline.account.endpoint, f"iam/role-policies?account_id={pipeline.account.id}&role_name=PublishFunctionRole", method="GET")
    assert status == 404


# ============================================================================ behaviour as each role


def test_create_image_role_imports_only_with_the_managed_request_tag(pipeline):
    assert pipeline.render()[0] == 200
    pipeline.account.s3().put_object(Bucket=pipeline.bucket, Key="disk.raw", Body=b"\0" * 512)
    ec2 = pipeline.role("CreateImageFunction").client("ec2", config=NO_RETRY)
    container = {"Format": "RAW", "UserBucket": {"S3Bucket": pipeline.bucket, "S3Key": "disk.raw"}}
    with aws_error("UnauthorizedOperation", f"ec2:ImportSnapshot on resource: arn:aws:ec2:us-east-1:{pipeline.account.id}:import-snapshot-task/*"):
        ec2.import_snapshot(DiskContainer=container, RoleName="vmimport")
    with aws_error("UnauthorizedOperation"):
        ec2.import_snapshot(DiskContainer=container, RoleName="vmimport",
                            TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": [{"Key": "ami-pipeline:managed", "Value": "false"}]}])
    task = ec2.import_snapshot(DiskContainer=container, RoleName="vmimport",
                               TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": MANAGED}])["ImportTaskId"]
    assert ec2.describe_import_snapshot_tasks(ImportTaskIds=[task])["ImportSnapshotTasks"][0]["ImportTaskId"] == task

    # The uploads bucket: objects readable and taggable, a missing key is a 404 (s3:ListBucket),
    # another bucket is not readable.
    s3 = pipeline.role("CreateImageFunction").client("s3", config=NO_RETRY)
    assert s3.head_object(Bucket=pipeline.bucket, Key="disk.raw")["ContentLength"] == 512
    s3.put_object_tagging(Bucket=pipeline.bucket, Key="disk.raw", Tagging={"TagSet": [{"Key": "ami-pipeline-status", "Value": "rejected"}]})
    with aws_error("NoSuchKey"):
        s3.get_object(Bucket=pipeline.bucket, Key="missing.raw")
    other = pipeline.account.bucket("other")
    pipeline.account.s3().put_object(Bucket=other, Key="disk.raw", Body=b"x")
    with aws_error("AccessDenied"):
        s3.get_object(Bucket=other, Key="disk.raw")
    with aws_error("AccessDenied"):
        s3.put_object(Bucket=pipeline.bucket, Key="new.raw", Body=b"x")


def test_create_image_role_registers_only_managed_images_from_tagged_snapshots(pipeline):
    assert pipeline.render()[0] == 200
    admin = pipeline.account.ec2()
    snapshot = make_snapshot(admin)
    ec2 = pipeline.role("CreateImageFunction").client("ec2", config=NO_RETRY)
    with aws_error("UnauthorizedOperation", "ec2:CreateTags on resource: arn:aws:ec2:us-east-1::snapshot/"):
        ec2.create_tags(Resources=[snapshot], Tags=[{"Key": "source_image", "Value": "x"}])
    # A snapshot not yet marked is not registrable (RegisterImageFromPipelineSnapshot).
    with aws_error("UnauthorizedOperation", f"ec2:RegisterImage on resource: arn:aws:ec2:us-east-1::snapshot/{snapshot}"):
        register(ec2, "early", snapshot, TagSpecifications=[{"ResourceType": "image", "Tags": MANAGED}])
    ec2.create_tags(Resources=[snapshot], Tags=MANAGED + [{"Key": "ami-pipeline:upload-method", "Value": "import-snapshot"}])
    with aws_error("UnauthorizedOperation", "ec2:RegisterImage on resource: arn:aws:ec2:us-east-1::image/*"):
        register(ec2, "unmanaged", snapshot)
    image_id = register(ec2, "managed", snapshot, TagSpecifications=[{"ResourceType": "image", "Tags": MANAGED + [{"Key": "team", "Value": "web"}]}])
    assert tags_of(admin.describe_images(ImageIds=[image_id])["Images"][0]) == {"ami-pipeline:managed": "true", "team": "web"}
    # Keys create-image never writes are refused on images and snapshots, at creation or later.
    with aws_error("UnauthorizedOperation", "explicit deny"):
        register(ec2, "sharing", snapshot, TagSpecifications=[{"ResourceType": "image", "Tags": MANAGED + [{"Key": "publish:accounts", "Value": "111122223333"}]}])
    for key in ("ami-pipeline:protect", "ami-pipeline:ready-at", "source_image", "ami-pipeline:publish-state"):
        with aws_error("UnauthorizedOperation", "explicit deny"):
            ec2.create_tags(Resources=[snapshot], Tags=MANAGED + [{"Key": key, "Value": "x"}])
    # The managed marker on an existing image: only at RegisterImage.
    foreign = register(admin, "foreign", make_snapshot(admin))
    with aws_error("UnauthorizedOperation", f"image/{foreign}"):
        ec2.create_tags(Resources=[foreign], Tags=MANAGED)
    # A snapshot someone marked managed=false is not the pipeline's to re-mark.
    marked = make_snapshot(admin)
    admin.create_tags(Resources=[marked], Tags=[{"Key": "ami-pipeline:managed", "Value": "false"}])
    with aws_error("UnauthorizedOperation", f"snapshot/{marked}"):
        ec2.create_tags(Resources=[marked], Tags=MANAGED)


def test_cleanup_role_may_not_deregister_an_image_without_the_managed_tag(pipeline):
    assert pipeline.render()[0] == 200
    admin = pipeline.account.ec2()
    managed = register(admin, "managed", make_snapshot(admin), TagSpecifications=[{"ResourceType": "image", "Tags": MANAGED}])
    foreign = register(admin, "foreign", make_snapshot(admin))
    ec2 = pipeline.role("CleanupFunction").client("ec2", config=NO_RETRY)
    assert {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} == {managed, foreign}
    with aws_error("UnauthorizedOperation", f"ec2:DeregisterImage on resource: arn:aws:ec2:us-east-1::image/{foreign}"):
        ec2.deregister_image(ImageId=foreign)
    with aws_error("UnauthorizedOperation", f"ec2:EnableImageDeprecation on resource: arn:aws:ec2:us-east-1::image/{foreign}"):
        ec2.enable_image_deprecation(ImageId=foreign, DeprecateAt=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30))
    ec2.deregister_image(ImageId=managed)

    # ForeignSelectors set: the unconditioned statement lets cleanup remove the foreign image.
    assert pipeline.render({"ForeignSelectors": "name:foreign"})[0] == 200
    ec2.deregister_image(ImageId=foreign)


def test_publish_role_tags_and_copies(pipeline, other_account):
    """publish records exactly its keys on managed sources (publish:*, its state), copies only
    an image this account owns, tagged in the request as its own managed copy, only into
    PublishRegions and never into a denied region; Public=never: no public snapshot."""
    assert pipeline.render({"PublishRegions": "us-west-2,eu-west-1", "PublishDenyRegions": "eu-west-2"})[0] == 200
    admin = pipeline.account.ec2()
    source = register(admin, "source", make_snapshot(admin), TagSpecifications=[{"ResourceType": "image", "Tags": MANAGED}])
    publish = pipeline.role("PublishFunction")
    ec2 = publish.client("ec2", config=NO_RETRY)
    ec2.create_tags(Resources=[source], Tags=[{"Key": "publish:accounts", "Value": "111122223333"}, {"Key": "ami-pipeline:publish-state", "Value": "in-progress"}])
    for tags in ([{"Key": "owner", "Value": "me"}], [{"Key": "ami-pipeline:family", "Value": "other"}], MANAGED,
                 [{"Key": "ami-pipeline:protect", "Value": "false"}]):
        with aws_error("UnauthorizedOperation", f"ec2:CreateTags on resource: arn:aws:ec2:us-east-1::image/{source}"):
            ec2.create_tags(Resources=[source], Tags=tags)
    with aws_error("UnauthorizedOperation", "explicit deny"):
        ec2.delete_tags(Resources=[source], Tags=[{"Key": "ami-pipeline:protect"}])

    tag = [{"Key": "ami-pipeline:publish-source", "Value": source}] + MANAGED
    specs = [{"ResourceType": "image", "Tags": tag}, {"ResourceType": "snapshot", "Tags": tag}]
    west = publish.client("ec2", "us-west-2", config=NO_RETRY)
    copy_id = west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="copy", CopyImageTags=True, TagSpecifications=specs)["ImageId"]
    with aws_error("UnauthorizedOperation", "ec2:CopyImage on resource: arn:aws:ec2:us-west-2::image/*"):
        west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name="untagged-copy")
    for region in ("eu-west-2", "ap-south-1"):  # denied; not in PublishRegions
        with aws_error("UnauthorizedOperation", "explicit deny"):
            publish.client("ec2", region, config=NO_RETRY).copy_image(
                SourceImageId=source, SourceRegion="us-east-1", Name="elsewhere", TagSpecifications=specs
            )
    # A public image of another account: ec2:Owner is that account.
    vendor_ec2 = other_account.ec2()
    vendor_snap = make_snapshot(vendor_ec2)
    vendor = register(vendor_ec2, "vendor", vendor_snap)
    vendor_ec2.modify_image_attribute(ImageId=vendor, LaunchPermission={"Add": [{"Group": "all"}]})
    vendor_ec2.modify_snapshot_attribute(SnapshotId=vendor_snap, CreateVolumePermission={"Add": [{"Group": "all"}]})
    with aws_error("UnauthorizedOperation", f"ec2:CopyImage on resource: arn:aws:ec2:us-east-1::image/{vendor}"):
        west.copy_image(SourceImageId=vendor, SourceRegion="us-east-1", Name="vendor-copy", TagSpecifications=specs)
    # Sharing its own copy (tagged publish-source at creation) is allowed; a foreign image is not.
    west.modify_image_attribute(ImageId=copy_id, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    foreign = register(admin, "foreign", make_snapshot(admin))
    with aws_error("UnauthorizedOperation", f"ec2:ModifyImageAttribute on resource: arn:aws:ec2:us-east-1::image/{foreign}"):
        ec2.modify_image_attribute(ImageId=foreign, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    # Public=never (the default): a snapshot is shared with accounts, never made public.
    copy_snap = pipeline.account.ec2("us-west-2").describe_images(ImageIds=[copy_id])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    west.modify_snapshot_attribute(SnapshotId=copy_snap, Attribute="createVolumePermission", OperationType="add", UserIds=["111122223333"])
    with aws_error("UnauthorizedOperation", "explicit deny"):
        west.modify_snapshot_attribute(SnapshotId=copy_snap, Attribute="createVolumePermission", OperationType="add", GroupNames=["all"])
    with aws_error("UnauthorizedOperation", "explicit deny"):
        west.modify_snapshot_attribute(SnapshotId=copy_snap, CreateVolumePermission={"Add": [{"Group": "all"}]})
    with aws_error("UnauthorizedOperation", "explicit deny"):
        west.disable_image_block_public_access()
    # SNS: its topic only.
    publish.client("sns").publish(TopicArn=pipeline.topic, Message="image.published")
    other = pipeline.account.client("sns").create_topic(Name="other")["TopicArn"]
    with aws_error("AuthorizationError"):
        publish.client("sns", config=NO_RETRY).publish(TopicArn=other, Message="x")

    # Public=opt-in: the snapshot may be made public.
    assert pipeline.render({"Public": "opt-in"})[0] == 200
    west.modify_snapshot_attribute(SnapshotId=copy_snap, CreateVolumePermission={"Add": [{"Group": "all"}]})


def test_tag_lineage_role_writes_only_lineage_keys(pipeline):
    assert pipeline.render()[0] == 200
    admin = pipeline.account.ec2()
    foreign = register(admin, "made-elsewhere", make_snapshot(admin))
    ec2 = pipeline.role("TagLineageFunction").client("ec2", config=NO_RETRY)
    ec2.create_tags(Resources=[foreign], Tags=[{"Key": "source_region", "Value": "us-east-1"}, {"Key": "ami-pipeline:generation", "Value": "0"}])
    ec2.create_tags(Resources=[foreign], Tags=[{"Key": "ami-pipeline:family", "Value": "web"}])  # none yet
    for tags in ([{"Key": "publish:regions", "Value": "eu-west-1"}], [{"Key": "ami-pipeline:publish-state", "Value": "in-progress"}],
                 [{"Key": "ami-pipeline:family", "Value": "db"}], [{"Key": "ami-pipeline:source-token", "Value": "t"}]):
        with aws_error("UnauthorizedOperation", "ec2:CreateTags"):
            ec2.create_tags(Resources=[foreign], Tags=tags)
    for key in ("ami-pipeline:managed", "ami-pipeline:protect"):
        with aws_error("UnauthorizedOperation", "explicit deny"):
            ec2.create_tags(Resources=[foreign], Tags=[{"Key": key, "Value": "true"}])
    with aws_error("UnauthorizedOperation", "ec2:DeregisterImage"):
        ec2.deregister_image(ImageId=foreign)


# ============================================================================ rendering (unit)


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "template.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def _render(path: str, **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
    roles = sam_policies.render_roles(path, account_id="111122223333", region="eu-west-1", **kwargs)
    return {role.role_name: role.policies for role in roles}


BASE = """
Transform: AWS::Serverless-2016-10-31
Parameters:
  Env: {Type: String, Default: dev}
  Regions: {Type: String, Default: "a,b,c"}
Conditions:
  IsProd: !Equals [!Ref Env, prod]
  NotProd: !Not [!Condition IsProd]
  Both: !And [!Condition NotProd, !Equals [!Select [1, !Split [",", !Ref Regions]], b]]
Resources:
  Bucket: {Type: AWS::S3::Bucket}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Policies:
        - S3ReadPolicy: {BucketName: !Ref Bucket}
        - Statement:
            - Effect: Allow
              Action: s3:PutObject
              Resource: !Sub "${Bucket.Arn}/${Env}/*"
            - Effect: Allow
              Action: logs:X
              Resource: !Sub
                - "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:${Name}"
                - {Name: !Join ["-", [!Ref AWS::StackName, !Ref Env]]}
            - !If [IsProd, {Effect: Deny, Action: "s3:*", Resource: "*"}, !Ref AWS::NoValue]
            - !If [Both, {Effect: Allow, Action: "ec2:X", Resource: !GetAtt Bucket.Arn}, !Ref AWS::NoValue]
        - !If [IsProd, {Statement: [{Effect: Allow, Action: "ec2:Y", Resource: "*"}]}, !Ref AWS::NoValue]
        - AWSLambdaBasicExecutionRole
"""


def test_render_intrinsics_conditions_and_policy_templates(tmp_path):
    path = _write(tmp_path, BASE)
    roles = _render(path, resources={"Bucket": {"Ref": "my-bucket"}}, stack_name="stk")
    policies = roles["FnRole"]
    assert len(policies) == 3  # basic execution (once), S3ReadPolicy, the inline document
    assert policies[1]["Statement"][0]["Resource"] == ["arn:aws:s3:::my-bucket", "arn:aws:s3:::my-bucket/*"]
    inline = policies[2]["Statement"]
    assert inline == [
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::my-bucket/dev/*"},
        {"Effect": "Allow", "Action": "logs:X", "Resource": "arn:aws:logs:eu-west-1:111122223333:stk-dev"},
        {"Effect": "Allow", "Action": "ec2:X", "Resource": "arn:aws:s3:::my-bucket"},
    ]
    prod = _render(path, parameters={"Env": "prod"}, resources={"Bucket": {"Ref": "my-bucket"}})["FnRole"]
    assert len(prod) == 4
    assert {"Effect": "Deny", "Action": "s3:*", "Resource": "*"} in prod[2]["Statement"]
    assert prod[3]["Statement"] == [{"Effect": "Allow", "Action": "ec2:Y", "Resource": "*"}]


def test_render_refuses_what_it_cannot_express(tmp_path):
    unknown_template = BASE.replace("S3ReadPolicy", "DynamoDBCrudPolicy")
    with pytest.raises(sam_policies.TemplateError, match="unknown SAM policy template 'DynamoDBCrudPolicy'"):
        _render(_write(tmp_path, unknown_template), resources={"Bucket": {"Ref": "b"}})
    managed = BASE.replace("- AWSLambdaBasicExecutionRole", "- AmazonS3ReadOnlyAccess")
    with pytest.raises(sam_policies.TemplateError, match="AmazonS3ReadOnlyAccess"):
        _render(_write(tmp_path, managed), resources={"Bucket": {"Ref": "b"}})
    with pytest.raises(sam_policies.TemplateError, match="resource Bucket"):
        _render(_write(tmp_path, BASE))
    missing_param = BASE.replace("S3ReadPolicy: {BucketName: !Ref Bucket}", "S3ReadPolicy: {}")
    with pytest.raises(sam_policies.TemplateError, match="missing parameter values"):
        _render(_write(tmp_path, missing_param), resources={"Bucket": {"Ref": "b"}})
    traced = BASE.replace("      Policies:", "      Tracing: Active\n      Policies:")
    with pytest.raises(sam_policies.TemplateError, match="Tracing"):
        _render(_write(tmp_path, traced), resources={"Bucket": {"Ref": "b"}})


def test_render_role_property_function_condition_and_globals_destination(tmp_path):
    path = _write(
        tmp_path,
        """
        Transform: AWS::Serverless-2016-10-31
        Conditions:
          Never: !Equals [a, b]
        Globals:
          Function:
            EventInvokeConfig:
              DestinationConfig:
                OnFailure: {Type: SQS, Destination: !GetAtt Queue.Arn}
        Resources:
          Queue: {Type: AWS::SQS::Queue}
          Topic: {Type: AWS::SNS::Topic}
          WithOwnRole:
            Type: AWS::Serverless::Function
            Properties: {Role: arn:aws:iam::111122223333:role/own}
          Skipped:
            Type: AWS::Serverless::Function
            Condition: Never
            Properties: {}
          Plain:
            Type: AWS::Serverless::Function
            Properties:
              EventInvokeConfig:
                DestinationConfig:
                  OnSuccess: {Type: SNS, Destination: !Ref Topic}
              Policies:
                - SNSPublishMessagePolicy: {TopicName: !GetAtt Topic.TopicName}
        """,
    )
    roles = _render(path, resources={"Queue": {"Arn": "arn:aws:sqs:eu-west-1:111122223333:q"}, "Topic": {"Ref": "arn:aws:sns:eu-west-1:111122223333:t"}})
    assert list(roles) == ["PlainRole"]
    statements = [s for p in roles["PlainRole"] for s in p["Statement"]]
    assert {"Action": "sqs:SendMessage", "Effect": "Allow", "Resource": "arn:aws:sqs:eu-west-1:111122223333:q"} in statements
    assert {"Action": "sns:publish", "Effect": "Allow", "Resource": "arn:aws:sns:eu-west-1:111122223333:t"} in statements
    assert {"Effect": "Allow", "Action": ["sns:Publish"], "Resource": "arn:aws:sns:eu-west-1:111122223333:t"} in statements


def test_control_api_refuses_an_unknown_policy_template(tmp_path, account):
    path = _write(tmp_path, BASE.replace("S3ReadPolicy", "NoSuchPolicy"))
    status, body = control_call(account.endpoint, "iam/template-roles",
                                {"account_id": account.id, "template_path": path, "resources": {"Bucket": {"Ref": "b"}}})
    assert status == 400 and "unknown SAM policy template 'NoSuchPolicy'" in body["error"], body
    status, body = control_call(account.endpoint, "iam/template-roles",
                                {"account_id": account.id, "template_path": str(tmp_path / "missing.yaml")})
    assert status == 400 and "missing.yaml" in body["error"], body
    status, body = control_call(account.endpoint, "iam/template-roles",
                                {"account_id": account.id, "template_path": _write(tmp_path, BASE), "resources": {"Bucket": {"Ref": "b"}}})
    assert status == 200 and body["region"] == "us-east-1" and json.dumps(body["roles"]) == json.dumps({"FnRole": {"function": "Fn", "statements": 5}})
