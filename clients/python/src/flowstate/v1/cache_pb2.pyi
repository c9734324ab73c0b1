import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SetCondition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SET_CONDITION_ALWAYS: _ClassVar[SetCondition]
    SET_CONDITION_IF_ABSENT: _ClassVar[SetCondition]
    SET_CONDITION_IF_PRESENT: _ClassVar[SetCondition]
SET_CONDITION_ALWAYS: SetCondition
SET_CONDITION_IF_ABSENT: SetCondition
SET_CONDITION_IF_PRESENT: SetCondition

class CacheGetRequest(_message.Message):
    __slots__ = ("namespace", "key", "lease")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    lease: bool
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., lease: _Optional[bool] = ...) -> None: ...

class CacheGetResponse(_message.Message):
    __slots__ = ("found", "value", "ttl_remaining", "stale", "lease_token", "lease_wait")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_REMAINING_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_WAIT_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    ttl_remaining: _duration_pb2.Duration
    stale: bool
    lease_token: str
    lease_wait: bool
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., ttl_remaining: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stale: _Optional[bool] = ..., lease_token: _Optional[str] = ..., lease_wait: _Optional[bool] = ...) -> None: ...

class CacheGetManyRequest(_message.Message):
    __slots__ = ("namespace", "keys")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class CacheEntry(_message.Message):
    __slots__ = ("key", "found", "value", "ttl_remaining", "stale")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_REMAINING_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    key: str
    found: bool
    value: bytes
    ttl_remaining: _duration_pb2.Duration
    stale: bool
    def __init__(self, key: _Optional[str] = ..., found: _Optional[bool] = ..., value: _Optional[bytes] = ..., ttl_remaining: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stale: _Optional[bool] = ...) -> None: ...

class CacheGetManyResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[CacheEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[CacheEntry, _Mapping]]] = ...) -> None: ...

class CacheSetRequest(_message.Message):
    __slots__ = ("namespace", "key", "value", "ttl", "tags", "condition", "lease_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    value: bytes
    ttl: _duration_pb2.Duration
    tags: _containers.RepeatedScalarFieldContainer[str]
    condition: SetCondition
    lease_token: str
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., condition: _Optional[_Union[SetCondition, str]] = ..., lease_token: _Optional[str] = ...) -> None: ...

class CacheSetResponse(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    def __init__(self, stored: _Optional[bool] = ...) -> None: ...

class CacheSetManyEntry(_message.Message):
    __slots__ = ("key", "value", "ttl", "tags", "condition")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    ttl: _duration_pb2.Duration
    tags: _containers.RepeatedScalarFieldContainer[str]
    condition: SetCondition
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., condition: _Optional[_Union[SetCondition, str]] = ...) -> None: ...

class CacheSetManyRequest(_message.Message):
    __slots__ = ("namespace", "entries")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    entries: _containers.RepeatedCompositeFieldContainer[CacheSetManyEntry]
    def __init__(self, namespace: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[CacheSetManyEntry, _Mapping]]] = ...) -> None: ...

class CacheSetManyResponse(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, stored: _Optional[_Iterable[bool]] = ...) -> None: ...

class CacheDeleteRequest(_message.Message):
    __slots__ = ("namespace", "keys")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class CacheDeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class CacheInvalidateTagsRequest(_message.Message):
    __slots__ = ("namespace", "tags")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class CacheInvalidateTagsResponse(_message.Message):
    __slots__ = ("invalidated",)
    INVALIDATED_FIELD_NUMBER: _ClassVar[int]
    invalidated: int
    def __init__(self, invalidated: _Optional[int] = ...) -> None: ...

class CacheInvalidateNamespaceRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class CacheInvalidateNamespaceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
