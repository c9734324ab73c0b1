import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishRequest(_message.Message):
    __slots__ = ("topic", "payload", "key")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    topic: str
    payload: bytes
    key: str
    def __init__(self, topic: _Optional[str] = ..., payload: _Optional[bytes] = ..., key: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("topics", "after", "start", "accept_gaps")
    class Start(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        START_UNSPECIFIED: _ClassVar[SubscribeRequest.Start]
        START_LATEST: _ClassVar[SubscribeRequest.Start]
        START_EARLIEST: _ClassVar[SubscribeRequest.Start]
    START_UNSPECIFIED: SubscribeRequest.Start
    START_LATEST: SubscribeRequest.Start
    START_EARLIEST: SubscribeRequest.Start
    class AfterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_GAPS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    after: _containers.ScalarMap[str, str]
    start: SubscribeRequest.Start
    accept_gaps: bool
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., after: _Optional[_Mapping[str, str]] = ..., start: _Optional[_Union[SubscribeRequest.Start, str]] = ..., accept_gaps: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("topic", "id", "payload", "key", "published_at")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    topic: str
    id: str
    payload: bytes
    key: str
    published_at: _timestamp_pb2.Timestamp
    def __init__(self, topic: _Optional[str] = ..., id: _Optional[str] = ..., payload: _Optional[bytes] = ..., key: _Optional[str] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("positions",)
    class PositionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.ScalarMap[str, str]
    def __init__(self, positions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("topic", "after", "first_id")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    FIRST_ID_FIELD_NUMBER: _ClassVar[int]
    topic: str
    after: str
    first_id: str
    def __init__(self, topic: _Optional[str] = ..., after: _Optional[str] = ..., first_id: _Optional[str] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("event", "subscribed", "gap")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    event: Event
    subscribed: Subscribed
    gap: Gap
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ...) -> None: ...
