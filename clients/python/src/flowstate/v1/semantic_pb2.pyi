import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SemanticSetRequest(_message.Message):
    __slots__ = ("namespace", "embedding", "value", "ttl", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    value: bytes
    ttl: _duration_pb2.Duration
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SemanticSetResponse(_message.Message):
    __slots__ = ("id", "evicted")
    ID_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    id: int
    evicted: int
    def __init__(self, id: _Optional[int] = ..., evicted: _Optional[int] = ...) -> None: ...

class SemanticGetRequest(_message.Message):
    __slots__ = ("namespace", "embedding", "min_similarity")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    min_similarity: float
    def __init__(self, namespace: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., min_similarity: _Optional[float] = ...) -> None: ...

class SemanticGetResponse(_message.Message):
    __slots__ = ("found", "id", "similarity", "value", "metadata", "ttl")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    found: bool
    id: int
    similarity: float
    value: bytes
    metadata: _containers.ScalarMap[str, str]
    ttl: _duration_pb2.Duration
    def __init__(self, found: _Optional[bool] = ..., id: _Optional[int] = ..., similarity: _Optional[float] = ..., value: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SemanticDeleteRequest(_message.Message):
    __slots__ = ("namespace", "id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    id: int
    def __init__(self, namespace: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class SemanticDeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...
