import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALGORITHM_UNSPECIFIED: _ClassVar[Algorithm]
    ALGORITHM_FIXED_WINDOW: _ClassVar[Algorithm]
    ALGORITHM_SLIDING_WINDOW: _ClassVar[Algorithm]
    ALGORITHM_TOKEN_BUCKET: _ClassVar[Algorithm]
    ALGORITHM_GCRA: _ClassVar[Algorithm]

class FailureMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_MODE_UNSPECIFIED: _ClassVar[FailureMode]
    FAILURE_MODE_OPEN: _ClassVar[FailureMode]
    FAILURE_MODE_CLOSED: _ClassVar[FailureMode]
ALGORITHM_UNSPECIFIED: Algorithm
ALGORITHM_FIXED_WINDOW: Algorithm
ALGORITHM_SLIDING_WINDOW: Algorithm
ALGORITHM_TOKEN_BUCKET: Algorithm
ALGORITHM_GCRA: Algorithm
FAILURE_MODE_UNSPECIFIED: FailureMode
FAILURE_MODE_OPEN: FailureMode
FAILURE_MODE_CLOSED: FailureMode

class LimitPolicy(_message.Message):
    __slots__ = ("algorithm", "limit", "period", "burst", "failure_mode")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MODE_FIELD_NUMBER: _ClassVar[int]
    algorithm: Algorithm
    limit: int
    period: _duration_pb2.Duration
    burst: int
    failure_mode: FailureMode
    def __init__(self, algorithm: _Optional[_Union[Algorithm, str]] = ..., limit: _Optional[int] = ..., period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., burst: _Optional[int] = ..., failure_mode: _Optional[_Union[FailureMode, str]] = ...) -> None: ...

class LimitCheck(_message.Message):
    __slots__ = ("name", "policy", "key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: LimitPolicy
    key: str
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[_Union[LimitPolicy, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("checks", "cost", "dry_run")
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    checks: _containers.RepeatedCompositeFieldContainer[LimitCheck]
    cost: int
    dry_run: bool
    def __init__(self, checks: _Optional[_Iterable[_Union[LimitCheck, _Mapping]]] = ..., cost: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CheckResult(_message.Message):
    __slots__ = ("allowed", "limit", "remaining", "reset_after", "retry_after", "enforced")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_AFTER_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    limit: int
    remaining: int
    reset_after: _duration_pb2.Duration
    retry_after: _duration_pb2.Duration
    enforced: bool
    def __init__(self, allowed: _Optional[bool] = ..., limit: _Optional[int] = ..., remaining: _Optional[int] = ..., reset_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., enforced: _Optional[bool] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("allowed", "results")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    results: _containers.RepeatedCompositeFieldContainer[CheckResult]
    def __init__(self, allowed: _Optional[bool] = ..., results: _Optional[_Iterable[_Union[CheckResult, _Mapping]]] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("name", "policy", "key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: LimitPolicy
    key: str
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[_Union[LimitPolicy, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
