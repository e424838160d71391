"""Speed: moto's response serializer picks each member's value without redoing fixed work.

moto 5.2.5 serializes every response from the botocore model (``moto/core/serialize.py``). For
each member of each structure it answers (``ResponseSerializer.get_value`` with moto's
``XFormedAttributePicker``): build an ``AttributePickerContext`` holding the joined key path,
instantiate the six alias providers to list the names the value may be stored under, try those
names on the object, then test the joined key path against every entry of the response class's
``RESPONSE_KEY_PATH_TO_TRANSFORMER``. In a cleanup benchmark that was about a fifth of the
emulator's time under the GIL (py-spy), though all but the final lookups give the same answer
every time for the same shapes and the same kind of object.

``get_value`` here gives the same value:

* The names tried, in order, are those ``XFormedAttributePicker.get_possible_keys`` lists, asked
  once per (object type, its ``Meta``, key, member shape, parent shape) — everything the default
  alias providers read (``ExplicitAlias``: ``Meta.serialization_aliases``; ``ClassPrefixAlias``:
  the class name; ``ShapeNameAlias``, ``ShapePrefixAlias``, ``ModelAlias``: the shapes) — and
  kept. The shapes are the service model's (``get_service_model`` is cached, and so are its
  operation models and their shapes), so they repeat. An object whose ``Meta`` is its own, not its
  class's, another picker class or other alias providers take moto's path unchanged.
* A transformer can only apply when its path, a suffix of the key path that ends in ``.key``, ends
  with the key or the key ends with it; the transformers meeting that are kept per key (for the
  transformer table's current size: moto only adds to it), and the key path is joined and tested,
  in the table's order, only when there are some. So a member no transformer names costs no join.

The serialized dict then becomes XML through ``xmltodict.unparse`` (about a tenth of the time),
whose SAX ``XMLGenerator`` makes a method call per element event and checks every element name
with a generator over its characters. ``unparse`` here writes the same text for what moto hands
it (no pretty printing, ``short_empty_elements``, no namespaces or comments), calling
xmltodict's own value conversion and name check (the latter once per distinct name) and
``xml.sax.saxutils``' ``escape`` and ``quoteattr`` as ``XMLGenerator`` does; anything else — a
comment key, an ``@xmlns`` map, an iterable other than a list or tuple, pretty printing, a second
root — is handed to xmltodict itself. It is installed only over the xmltodict release it was
written against (``XMLTODICT_VERSION``).

With it, EC2's lists of structures (the images of a DescribeImages page, their mappings and tags,
instances, volumes, snapshots...) are written as XML as moto's serializer walks them
(``_serialize_type_list``): the same member values from ``get_value`` on the same key path, the
same conversions, and the text ``unparse`` would give moto's dicts; the list's element then holds
that text. A shape with anything else in it (a map, a float, a blob, an XML attribute or
namespace, a flattened list, two members under one name) and a pretty-printed answer are
moto's. ``LISTS = False`` serializes every list as moto does (for comparison).
"""

from __future__ import annotations

import importlib.metadata
import threading
from typing import Any, Callable
from xml.sax.saxutils import escape, quoteattr

import moto.core.serialize as moto_serialize
import xmltodict
from moto.core.serialize import (
    DEFAULT_ALIAS_PROVIDERS,
    AttributePickerContext,
    BaseXMLSerializer,
    EC2Serializer,
    ResponseSerializer,
    XFormedAttributePicker,
)
from moto.core.utils import MISSING
from moto.core.utils import get_value as _lookup

_original_get_value: Callable[..., Any] = ResponseSerializer.get_value

# (type, Meta, key, shape, parent) -> (names to try, whether none has a dot: a dotted name is a
# path that moto's ``get_value`` walks). Bounded by the model's shapes times the
# object types that meet them; the cap only guards against something unforeseen.
_names: dict[tuple[Any, ...], tuple[tuple[str, ...], bool]] = {}
# (id of a transformer table, its size, key) -> (the table, the paths that may apply to key)
_transforms: dict[tuple[int, int, str], tuple[dict[str, Any], tuple[str, ...]]] = {}
_MEMO_CAP = 100_000
_lock = threading.Lock()


def _kept(memo: dict[Any, Any], key: Any, value: Any) -> Any:
    with _lock:
        if len(memo) < _MEMO_CAP:
            memo[key] = value
    return value


def get_value(self: ResponseSerializer, value: Any, key: str, shape: Any) -> Any:
    picker = self._value_picker
    if type(picker) is not XFormedAttributePicker or picker.alias_providers is not DEFAULT_ALIAS_PROVIDERS:
        return _original_get_value(self, value, key, shape)
    cls = type(value)
    meta = getattr(value, "Meta", None)
    if meta is not None and meta is not getattr(cls, "Meta", None):
        return _original_get_value(self, value, key, shape)
    memo_key = (cls, meta, key, shape, getattr(shape, "parent", None))
    entry = _names.get(memo_key)
    if entry is None:
        context = AttributePickerContext(
            obj=value,
            key=key,
            shape=shape,
            operation_model=self.operation_model,
            service_model=self.operation_model.service_model,
            key_path=".".join(self.path),
        )
        names = tuple(picker.get_possible_keys(context))
        entry = _kept(_names, memo_key, (names, all(isinstance(n, str) and "." not in n for n in names)))
    names, flat = entry
    found = None
    if flat and cls is dict:
        # moto's lookup of a plain name on a dict is ``obj[name]`` with KeyError as "missing".
        for name in names:
            if name in value:
                found = value[name]
                break
    elif flat and not hasattr(value, "__getitem__"):
        # ... and on an object without ``__getitem__``, ``getattr(obj, name, missing)``.
        for name in names:
            attr = getattr(value, name, MISSING)
            if attr is not MISSING:
                found = attr
                break
    else:
        for name in names:
            attr = _lookup(value, name, MISSING)
            if attr is not MISSING:
                found = attr
                break
    table = picker.response_transformers
    if not table:
        return found
    paths = _transform_paths(table, key)
    if paths:
        key_path = f"{'.'.join(self.path)}.{key}"
        for path in paths:
            if key_path.endswith(path):
                return table[path](found)
    return found


def _transform_paths(table: dict[str, Any], key: str) -> tuple[str, ...]:
    """The paths of ``table``, in its order, that can match a key path ending in ``.key``."""
    memo_key = (id(table), len(table), key)
    kept = _transforms.get(memo_key)
    if kept is not None and kept[0] is table:
        return kept[1]
    paths = tuple(p for p in table if key.endswith(p) or p.endswith(key))
    _kept(_transforms, memo_key, (table, paths))
    return paths


XMLTODICT_VERSION = "1.0.4"
_unparse = xmltodict.unparse
_convert = xmltodict._convert_value_to_string  # noqa: SLF001 - the conversion unparse applies
_validate_name = xmltodict._validate_name  # noqa: SLF001 - the name check unparse applies
_names_checked: set[tuple[str, str]] = set()


class _Delegate(Exception):
    """The input is not one the fast writer covers: xmltodict writes it."""


def unparse(input_dict: Any, output: Any = None, encoding: str = "utf-8", full_document: bool = True,
            short_empty_elements: bool = False, comment_key: str = "#comment", **kwargs: Any) -> Any:
    """``xmltodict.unparse`` for moto's calls (see the module docstring); the same text."""
    if output is not None or encoding != "utf-8" or not short_empty_elements or comment_key != "#comment" or kwargs.keys() - {"pretty"} or kwargs.get("pretty"):
        return _delegated(input_dict, output, encoding, full_document, short_empty_elements, comment_key, **kwargs)
    try:
        writer = _Writer()
        if full_document:
            writer.out.append('<?xml version="1.0" encoding="utf-8"?>\n')
        roots = 0
        for key, value in input_dict.items():
            if key == comment_key:
                raise _Delegate
            roots += 1
            if full_document and roots > 1:
                raise _Delegate  # xmltodict's "exactly one root" error
            writer.element(key, value, full_document, 0)
        if full_document and not roots:
            raise _Delegate
        return "".join(writer.out)
    except _Delegate:
        return _delegated(input_dict, output, encoding, full_document, short_empty_elements, comment_key, **kwargs)


def _delegated(input_dict: Any, *args: Any, **kwargs: Any) -> Any:
    """xmltodict's own ``unparse``, for anything the fast writer does not cover."""
    if _holds_raw(input_dict):
        # Text written ahead (``_Raw``) would be escaped by xmltodict as a value: an error, never
        # a wrong answer.
        raise RuntimeError("fast_serialize: an answer with pre-written XML cannot go to xmltodict")
    return _unparse(input_dict, *args, **kwargs)


class _Raw(str):
    """The XML of a list's entries, written ahead by ``_serialize_type_list`` (see there):
    the writer puts it between the list's tags as it is."""


def _holds_raw(value: Any) -> bool:
    if isinstance(value, _Raw):
        return True
    if isinstance(value, dict):
        return any(_holds_raw(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_raw(v) for v in value)
    return False


def _check_name(name: Any, kind: str) -> None:
    if not isinstance(name, str):
        _validate_name(name, kind)  # raises: a name must be a string
    if (name, kind) in _names_checked:
        return
    _validate_name(name, kind)  # raises as xmltodict does
    if len(_names_checked) < _MEMO_CAP:
        _names_checked.add((name, kind))


class _Writer:
    """xmltodict's ``_emit`` into ``XMLGenerator(short_empty_elements=True)``, as text parts."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.pending = False  # a start tag written without its ">" (XMLGenerator's pending)

    def element(self, key: Any, value: Any, single_root: bool, depth: int) -> None:
        if isinstance(key, str) and key == "#comment":
            raise _Delegate
        _check_name(key, "element")
        if not hasattr(value, "__iter__") or isinstance(value, (str, bytes, bytearray, memoryview, dict)):
            value = [value]
        elif not isinstance(value, (list, tuple)):
            raise _Delegate  # an iterator: xmltodict must be the one to consume it
        if single_root and depth == 0 and len(value) > 1:
            raise _Delegate  # xmltodict's "document with multiple roots" error
        out = self.out
        if type(value) is list and len(value) == 1 and type(value[0]) is _Raw:
            # What the loop below writes for a dict of complete child elements.
            if self.pending:
                out.append(">")
                self.pending = False
            out.append(f"<{key}>{value[0]}</{key}>")
            return
        for v in value:
            if v is None:
                v = {}
            elif not isinstance(v, (dict, str)):
                v = _convert(v)
            if isinstance(v, str):
                v = {"#text": v}
            cdata = None
            attrs: dict[str, str] = {}
            children = []
            for ik, iv in v.items():
                if ik == "#text":
                    cdata = None if iv is None else _convert(iv)
                    continue
                if isinstance(ik, str) and ik.startswith("@"):
                    if ik == "@xmlns" and isinstance(iv, dict):
                        raise _Delegate
                    if iv is None:
                        iv = ""
                    elif not isinstance(iv, str):
                        iv = _convert(iv)
                    name = ik[1:]
                    _check_name(name, "attribute")
                    attrs[name] = iv
                    continue
                if isinstance(iv, list) and not iv:
                    continue
                children.append((ik, iv))
            if self.pending:
                out.append(">")
            out.append("<" + key)
            for name, text in attrs.items():
                out.append(f" {name}={quoteattr(text)}")
            self.pending = True
            for child_key, child_value in children:
                self.element(child_key, child_value, single_root, depth + 1)
            if cdata:
                if self.pending:
                    out.append(">")
                    self.pending = False
                out.append(escape(cdata))
            if self.pending:
                out.append("/>")
                self.pending = False
            else:
                out.append(f"</{key}>")


# -- Lists of structures written as XML directly ---------------------------------------------

_original_serialize_type_list = BaseXMLSerializer._serialize_type_list

# Scalar shape types written here, as moto's EC2 serializer converts them (``str``, its boolean
# test, ``int``, its timestamp serializer); any other type in a structure takes moto's path.
_SCALARS = frozenset(("string", "boolean", "integer", "long", "timestamp"))

# False: every list through moto's ``_serialize_type_list`` (for comparison).
LISTS = True

# id(shape) -> (shape, whether its values can be written here); shapes are the cached model's.
_simple: dict[int, tuple[Any, bool]] = {}


def _writable(shape: Any, seen: frozenset[int] = frozenset()) -> bool:
    """Whether every value of ``shape`` can be written here: structures, lists that are not
    flattened and the scalars above, none an XML attribute or namespace, no two members of a
    structure under one name."""
    kept = _simple.get(id(shape))
    if kept is not None and kept[0] is shape:
        return kept[1]
    if id(shape) in seen:
        return False  # a recursive shape: left to moto
    seen = seen | {id(shape)}
    serialization = shape.serialization
    ok = not serialization.get("xmlAttribute") and not serialization.get("xmlNamespace")
    if ok and shape.type_name == "structure":
        names = [m.serialization.get("name", k) for k, m in shape.members.items()]
        ok = len(set(names)) == len(names) and all(_writable(m, seen) for m in shape.members.values())
    elif ok and shape.type_name == "list":
        ok = not shape.is_flattened and _writable(shape.member, seen)
    elif ok:
        ok = shape.type_name in _SCALARS
    _kept(_simple, id(shape), (shape, ok))
    return ok


def _serialize_type_list(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
    """``BaseXMLSerializer._serialize_type_list`` for EC2's answers: a list whose entries are
    structures (an image, its block device mappings, its tags) is written as XML here, with the
    same member values (``get_value`` on the same key path), the same conversions and the same
    text as moto's dicts through ``unparse`` would give; the list's element then holds that
    text (``_Raw``). Any other list, and any list when the answer is pretty-printed, is moto's."""
    member = shape.member
    if (
        not LISTS
        or self.pretty_print
        or not _fast_unparse_installed
        or member.type_name != "structure"
        or not _writable(shape)
    ):
        return _original_serialize_type_list(self, serialized, value, shape, key)
    parts: list[str] = []
    tag = member.serialization.get("name", "member")
    for item in value:
        self.path.append(member.name)
        try:
            _structure(self, parts, item, member, tag, True)
        finally:
            self.path.pop()
    name = shape.serialization.get("name", key)
    serialized[name] = _Raw("".join(parts)) if parts else ""


def _structure(self: Any, parts: list[str], value: Any, shape: Any, tag: str, in_list: bool) -> None:
    """Appends ``<tag>`` with ``value``'s members (moto's ``_serialize_type_structure`` into a
    dict, then the writer): nothing for None; in a list, nothing when no member has a value
    (moto drops an empty entry); elsewhere ``<tag/>`` then."""
    if value is None:
        return
    start = len(parts)
    parts.append(f"<{tag}>")
    for member_key, member_shape in shape.members.items():
        member_shape.parent = shape
        member_value = self.get_value(value, member_key, member_shape)
        if member_value is None:
            continue
        self.path.append(member_key)
        try:
            _member(self, parts, member_value, member_shape, member_key)
        finally:
            self.path.pop()
    if len(parts) == start + 1:
        if in_list:
            del parts[start:]
        else:
            parts[start] = f"<{tag}/>"
        return
    parts.append(f"</{tag}>")


def _member(self: Any, parts: list[str], value: Any, shape: Any, key: str) -> None:
    name = shape.serialization.get("name", key)
    kind = shape.type_name
    if kind == "structure":
        _structure(self, parts, value, shape, name, False)
        return
    if kind == "list":
        member = shape.member
        tag = member.serialization.get("name", "member")
        start = len(parts)
        parts.append(f"<{name}>")
        for item in value:
            self.path.append(member.name)
            try:
                if member.type_name == "structure":
                    _structure(self, parts, item, member, tag, True)
                else:
                    _scalar_element(self, parts, item, member, tag)
            finally:
                self.path.pop()
        if len(parts) == start + 1:
            parts[start] = f"<{name}/>"  # moto's "" for an empty list
        else:
            parts.append(f"</{name}>")
        return
    _scalar_element(self, parts, value, shape, name)


def _scalar_element(self: Any, parts: list[str], value: Any, shape: Any, tag: str) -> None:
    kind = shape.type_name
    if kind == "boolean":
        text = "true" if (value is True or str(value).lower() == "true") else "false"
    elif kind in ("integer", "long"):
        text = str(int(value))
    elif kind == "timestamp":
        wrapper: dict[str, Any] = {}
        self._timestamp_serializer.serialize(wrapper, value, shape, "timestamp")
        stamp = wrapper["timestamp"]
        text = "" if stamp is None else _convert(stamp)
    else:
        text = str(value)
    parts.append(f"<{tag}>{escape(text)}</{tag}>" if text else f"<{tag}/>")


class _FastXmlToDict:
    """What ``moto.core.serialize`` reads of the ``xmltodict`` module, with the fast ``unparse``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(xmltodict, name)

    unparse = staticmethod(unparse)


_installed = False
_fast_unparse_installed = False


def install() -> None:
    global _installed, _fast_unparse_installed
    if _installed:
        return
    ResponseSerializer.get_value = get_value  # type: ignore[method-assign]
    if importlib.metadata.version("xmltodict") == XMLTODICT_VERSION:
        moto_serialize.xmltodict = _FastXmlToDict()  # type: ignore[assignment]
        _fast_unparse_installed = True
        EC2Serializer._serialize_type_list = _serialize_type_list  # type: ignore[method-assign]
    _installed = True
