"""The least-privilege IAM policy for the S3 destination's credentials.

What the product needs: read the bucket's versioning and object-lock configuration, list
(versions, unfinished uploads), put objects with retention, tags and multipart uploads, read
them back. What it must never be able to do, so a compromised application host cannot
destroy its backups: delete an object or a version, bypass governance retention, or change
the bucket's lock, versioning, lifecycle or policy. Those are denied explicitly, so another
policy attached to the same user cannot grant them back (an explicit Deny wins in AWS IAM
and in SeaweedFS).

Printed by ``backup-pipeline destination policy`` and documented in
``docs/guides/S3-DESTINATION.md``; the SeaweedFS tests run the product under exactly this policy.
"""

from __future__ import annotations

from typing import Any

BUCKET_READ_ACTIONS = (
    "s3:GetBucketLocation",
    "s3:GetBucketVersioning",
    "s3:GetBucketObjectLockConfiguration",
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:ListBucketMultipartUploads",
)
OBJECT_ACTIONS = (
    "s3:PutObject",
    "s3:PutObjectRetention",
    "s3:PutObjectTagging",
    "s3:PutObjectVersionTagging",
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:GetObjectRetention",
    "s3:GetObjectTagging",
    "s3:GetObjectVersionTagging",
    "s3:ListMultipartUploadParts",
    "s3:AbortMultipartUpload",
)
DENIED_ACTIONS = (
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:BypassGovernanceRetention",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:DeleteBucket",
)


def least_privilege_policy(bucket: str, prefix: str = "") -> dict[str, Any]:
    """An IAM identity policy (AWS syntax) for the destination's access key on ``bucket``/``prefix``."""
    bucket_arn = f"arn:aws:s3:::{bucket}"
    objects_arn = f"{bucket_arn}/{prefix}*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadBucketSettingsAndList",
                "Effect": "Allow",
                "Action": list(BUCKET_READ_ACTIONS),
                "Resource": bucket_arn,
            },
            {
                "Sid": "WriteAndReadBackupParts",
                "Effect": "Allow",
                "Action": list(OBJECT_ACTIONS),
                "Resource": objects_arn,
            },
            {
                "Sid": "NeverDeleteOrWeakenProtection",
                "Effect": "Deny",
                "Action": list(DENIED_ACTIONS),
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
            },
        ],
    }
