"""Speed: per-resource tag lookups without scanning the whole tag store.

moto's ``TaggedEC2Resource.get_tags`` (used for every ``Tags`` member in a response and every
``tag:``/``tag-key``/``tag-value`` filter check) calls ``describe_tags`` with a ``resource-id``
filter, which compiles a regex and walks every tag of the account+region. With 10,000 tagged
images one DescribeImages page filtered on a tag took minutes. ``get_tags`` here reads the
resource's own entry of the same store (``EC2Backend.tags``: resource id -> {key: value}) and
returns the same list of ``{"resource_id", "key", "value", "resource_type"}`` dicts in the same
order, so behaviour is unchanged.
"""

from __future__ import annotations

from typing import Any

from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix


def get_tags(self: Any) -> list[dict[str, str]]:
    resource_id = getattr(self, "id", None)
    if not resource_id:
        return []
    # .get: ``tags`` is a defaultdict; a lookup must not create an entry.
    tags = self.ec2_backend.tags.get(resource_id)
    if not tags:
        return []
    resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
    return [
        {"resource_id": resource_id, "key": key, "value": value, "resource_type": resource_type}
        for key, value in list(tags.items())
    ]


def install() -> None:
    TaggedEC2Resource.get_tags = get_tags  # type: ignore[method-assign]
