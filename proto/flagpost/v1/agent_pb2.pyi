import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_MIGRATION_DETECTION: _ClassVar[EventType]
    EVENT_TYPE_MIGRATION_EXECUTION: _ClassVar[EventType]
    EVENT_TYPE_AGENT_NOTICE: _ClassVar[EventType]
    EVENT_TYPE_MIGRATION_REVERT: _ClassVar[EventType]
    EVENT_TYPE_MIGRATION_PREVIEW: _ClassVar[EventType]

class EventStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_STATUS_UNSPECIFIED: _ClassVar[EventStatus]
    EVENT_STATUS_SUCCESS: _ClassVar[EventStatus]
    EVENT_STATUS_FAILED: _ClassVar[EventStatus]
    EVENT_STATUS_WARNING: _ClassVar[EventStatus]
    EVENT_STATUS_NOT_NEEDED: _ClassVar[EventStatus]
    EVENT_STATUS_PARTIAL: _ClassVar[EventStatus]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_PENDING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_AWAITING_INPUT: _ClassVar[RunState]
    RUN_STATE_SUCCEEDED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_PARTIAL: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_MIGRATION_DETECTION: EventType
EVENT_TYPE_MIGRATION_EXECUTION: EventType
EVENT_TYPE_AGENT_NOTICE: EventType
EVENT_TYPE_MIGRATION_REVERT: EventType
EVENT_TYPE_MIGRATION_PREVIEW: EventType
EVENT_STATUS_UNSPECIFIED: EventStatus
EVENT_STATUS_SUCCESS: EventStatus
EVENT_STATUS_FAILED: EventStatus
EVENT_STATUS_WARNING: EventStatus
EVENT_STATUS_NOT_NEEDED: EventStatus
EVENT_STATUS_PARTIAL: EventStatus
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_PENDING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_AWAITING_INPUT: RunState
RUN_STATE_SUCCEEDED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_PARTIAL: RunState
RUN_STATE_CANCELLED: RunState

class HostFacts(_message.Message):
    __slots__ = ("hostname", "os", "kernel", "agent_version", "config_version", "disk_free_bytes", "machine_id", "specs", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    SPECS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    os: str
    kernel: str
    agent_version: str
    config_version: str
    disk_free_bytes: int
    machine_id: str
    specs: _containers.RepeatedCompositeFieldContainer[SpecVersion]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, hostname: _Optional[str] = ..., os: _Optional[str] = ..., kernel: _Optional[str] = ..., agent_version: _Optional[str] = ..., config_version: _Optional[str] = ..., disk_free_bytes: _Optional[int] = ..., machine_id: _Optional[str] = ..., specs: _Optional[_Iterable[_Union[SpecVersion, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SpecVersion(_message.Message):
    __slots__ = ("spec_id", "revision", "version", "error")
    SPEC_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    spec_id: str
    revision: int
    version: str
    error: str
    def __init__(self, spec_id: _Optional[str] = ..., revision: _Optional[int] = ..., version: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("token", "facts")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    token: str
    facts: HostFacts
    def __init__(self, token: _Optional[str] = ..., facts: _Optional[_Union[HostFacts, _Mapping]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("agent_id", "credential", "checkin_interval_seconds", "server_signing_key", "credential_expires_at")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CHECKIN_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVER_SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    credential: str
    checkin_interval_seconds: int
    server_signing_key: bytes
    credential_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, agent_id: _Optional[str] = ..., credential: _Optional[str] = ..., checkin_interval_seconds: _Optional[int] = ..., server_signing_key: _Optional[bytes] = ..., credential_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("failing_step", "file_path", "errno", "errno_name", "exception_type", "line", "rollback", "rollback_error", "backup_path")
    FAILING_STEP_FIELD_NUMBER: _ClassVar[int]
    FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    ERRNO_NAME_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ERROR_FIELD_NUMBER: _ClassVar[int]
    BACKUP_PATH_FIELD_NUMBER: _ClassVar[int]
    failing_step: str
    file_path: str
    errno: int
    errno_name: str
    exception_type: str
    line: int
    rollback: str
    rollback_error: str
    backup_path: str
    def __init__(self, failing_step: _Optional[str] = ..., file_path: _Optional[str] = ..., errno: _Optional[int] = ..., errno_name: _Optional[str] = ..., exception_type: _Optional[str] = ..., line: _Optional[int] = ..., rollback: _Optional[str] = ..., rollback_error: _Optional[str] = ..., backup_path: _Optional[str] = ...) -> None: ...

class MigrationEvent(_message.Message):
    __slots__ = ("event_id", "event_type", "status", "error_message", "error_detail", "migration_from", "migration_to", "occurred_at", "system_info", "run_id", "message", "spec_id", "spec_revision", "diffs", "action_id")
    class SystemInfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FROM_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_TO_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_INFO_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SPEC_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_REVISION_FIELD_NUMBER: _ClassVar[int]
    DIFFS_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_type: EventType
    status: EventStatus
    error_message: str
    error_detail: ErrorDetail
    migration_from: str
    migration_to: str
    occurred_at: _timestamp_pb2.Timestamp
    system_info: _containers.ScalarMap[str, str]
    run_id: str
    message: str
    spec_id: str
    spec_revision: int
    diffs: _containers.RepeatedCompositeFieldContainer[FileDiff]
    action_id: str
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., status: _Optional[_Union[EventStatus, str]] = ..., error_message: _Optional[str] = ..., error_detail: _Optional[_Union[ErrorDetail, _Mapping]] = ..., migration_from: _Optional[str] = ..., migration_to: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., system_info: _Optional[_Mapping[str, str]] = ..., run_id: _Optional[str] = ..., message: _Optional[str] = ..., spec_id: _Optional[str] = ..., spec_revision: _Optional[int] = ..., diffs: _Optional[_Iterable[_Union[FileDiff, _Mapping]]] = ..., action_id: _Optional[str] = ...) -> None: ...

class FileDiff(_message.Message):
    __slots__ = ("path", "diff", "operations", "note")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    path: str
    diff: str
    operations: _containers.RepeatedScalarFieldContainer[str]
    note: str
    def __init__(self, path: _Optional[str] = ..., diff: _Optional[str] = ..., operations: _Optional[_Iterable[str]] = ..., note: _Optional[str] = ...) -> None: ...

class CheckInRequest(_message.Message):
    __slots__ = ("agent_id", "facts", "events", "run_updates", "log_lines", "acknowledged_action_ids")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RUN_UPDATES_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_ACTION_IDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    facts: HostFacts
    events: _containers.RepeatedCompositeFieldContainer[MigrationEvent]
    run_updates: _containers.RepeatedCompositeFieldContainer[RunUpdate]
    log_lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    acknowledged_action_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., facts: _Optional[_Union[HostFacts, _Mapping]] = ..., events: _Optional[_Iterable[_Union[MigrationEvent, _Mapping]]] = ..., run_updates: _Optional[_Iterable[_Union[RunUpdate, _Mapping]]] = ..., log_lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ..., acknowledged_action_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("index", "name", "status", "error", "duration_ms")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    status: str
    error: str
    duration_ms: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., error: _Optional[str] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class RunUpdate(_message.Message):
    __slots__ = ("update_id", "run_id", "state", "steps_done", "steps_total", "steps", "started_at", "finished_at", "migration_id", "migration_from", "migration_to", "error_message", "requested_by_action_id", "occurred_at", "input_request", "spec_revision", "reverts_run_id")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FROM_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_TO_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    INPUT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SPEC_REVISION_FIELD_NUMBER: _ClassVar[int]
    REVERTS_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    run_id: str
    state: RunState
    steps_done: int
    steps_total: int
    steps: _containers.RepeatedCompositeFieldContainer[StepResult]
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    migration_id: str
    migration_from: str
    migration_to: str
    error_message: str
    requested_by_action_id: str
    occurred_at: _timestamp_pb2.Timestamp
    input_request: InputRequest
    spec_revision: int
    reverts_run_id: str
    def __init__(self, update_id: _Optional[str] = ..., run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., steps_done: _Optional[int] = ..., steps_total: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[StepResult, _Mapping]]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., migration_id: _Optional[str] = ..., migration_from: _Optional[str] = ..., migration_to: _Optional[str] = ..., error_message: _Optional[str] = ..., requested_by_action_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., input_request: _Optional[_Union[InputRequest, _Mapping]] = ..., spec_revision: _Optional[int] = ..., reverts_run_id: _Optional[str] = ...) -> None: ...

class InputField(_message.Message):
    __slots__ = ("name", "label", "secret", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    label: str
    secret: bool
    error: str
    def __init__(self, name: _Optional[str] = ..., label: _Optional[str] = ..., secret: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class InputRequest(_message.Message):
    __slots__ = ("request_id", "fields")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    fields: _containers.RepeatedCompositeFieldContainer[InputField]
    def __init__(self, request_id: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[InputField, _Mapping]]] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("run_id", "seq", "timestamp", "level", "source", "message", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    seq: int
    timestamp: _timestamp_pb2.Timestamp
    level: str
    source: str
    message: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, run_id: _Optional[str] = ..., seq: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., level: _Optional[str] = ..., source: _Optional[str] = ..., message: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("action_id", "body", "signature")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    body: bytes
    signature: bytes
    def __init__(self, action_id: _Optional[str] = ..., body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ActionBody(_message.Message):
    __slots__ = ("action_id", "agent_id", "kind", "params", "issued_at", "expires_at", "nonce")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    agent_id: str
    kind: str
    params: _containers.ScalarMap[str, str]
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    nonce: bytes
    def __init__(self, action_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., kind: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class LogAck(_message.Message):
    __slots__ = ("run_id", "seqs")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, run_id: _Optional[str] = ..., seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class CheckInResponse(_message.Message):
    __slots__ = ("acknowledged_event_ids", "next_checkin_seconds", "actions", "acknowledged_run_update_ids", "acknowledged_log_lines", "new_credential", "new_credential_expires_at")
    ACKNOWLEDGED_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHECKIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_RUN_UPDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_LOG_LINES_FIELD_NUMBER: _ClassVar[int]
    NEW_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    NEW_CREDENTIAL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    acknowledged_event_ids: _containers.RepeatedScalarFieldContainer[str]
    next_checkin_seconds: int
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    acknowledged_run_update_ids: _containers.RepeatedScalarFieldContainer[str]
    acknowledged_log_lines: _containers.RepeatedCompositeFieldContainer[LogAck]
    new_credential: str
    new_credential_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, acknowledged_event_ids: _Optional[_Iterable[str]] = ..., next_checkin_seconds: _Optional[int] = ..., actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ..., acknowledged_run_update_ids: _Optional[_Iterable[str]] = ..., acknowledged_log_lines: _Optional[_Iterable[_Union[LogAck, _Mapping]]] = ..., new_credential: _Optional[str] = ..., new_credential_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
