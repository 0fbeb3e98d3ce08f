from protos.rlhf.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ranking(_message.Message):
    __slots__ = ("request_id", "choices", "prompt", "responses", "ranks")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    choices: _containers.RepeatedScalarFieldContainer[int]
    prompt: str
    responses: _containers.RepeatedScalarFieldContainer[str]
    ranks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, request_id: _Optional[str] = ..., choices: _Optional[_Iterable[int]] = ..., prompt: _Optional[str] = ..., responses: _Optional[_Iterable[str]] = ..., ranks: _Optional[_Iterable[int]] = ...) -> None: ...

class Comparison(_message.Message):
    __slots__ = ("request_id", "choice_a", "choice_b", "prompt", "text_a", "text_b", "preferred")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICE_A_FIELD_NUMBER: _ClassVar[int]
    CHOICE_B_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TEXT_A_FIELD_NUMBER: _ClassVar[int]
    TEXT_B_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    choice_a: int
    choice_b: int
    prompt: str
    text_a: str
    text_b: str
    preferred: str
    def __init__(self, request_id: _Optional[str] = ..., choice_a: _Optional[int] = ..., choice_b: _Optional[int] = ..., prompt: _Optional[str] = ..., text_a: _Optional[str] = ..., text_b: _Optional[str] = ..., preferred: _Optional[str] = ...) -> None: ...

class Rating(_message.Message):
    __slots__ = ("request_id", "choice", "prompt", "response", "score", "comment")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    choice: int
    prompt: str
    response: str
    score: float
    comment: str
    def __init__(self, request_id: _Optional[str] = ..., choice: _Optional[int] = ..., prompt: _Optional[str] = ..., response: _Optional[str] = ..., score: _Optional[float] = ..., comment: _Optional[str] = ...) -> None: ...

class Demonstration(_message.Message):
    __slots__ = ("prompt", "messages", "response", "request_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[_inference_pb2.ChatMessage]
    response: str
    request_id: str
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_inference_pb2.ChatMessage, _Mapping]]] = ..., response: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class FeedbackItem(_message.Message):
    __slots__ = ("event_id", "submitted_by", "ranking", "comparison", "rating", "demonstration")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    DEMONSTRATION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    submitted_by: str
    ranking: Ranking
    comparison: Comparison
    rating: Rating
    demonstration: Demonstration
    def __init__(self, event_id: _Optional[str] = ..., submitted_by: _Optional[str] = ..., ranking: _Optional[_Union[Ranking, _Mapping]] = ..., comparison: _Optional[_Union[Comparison, _Mapping]] = ..., rating: _Optional[_Union[Rating, _Mapping]] = ..., demonstration: _Optional[_Union[Demonstration, _Mapping]] = ...) -> None: ...

class FeedbackAck(_message.Message):
    __slots__ = ("event_id", "status")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    status: str
    def __init__(self, event_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class FeedbackBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeedbackItem]
    def __init__(self, items: _Optional[_Iterable[_Union[FeedbackItem, _Mapping]]] = ...) -> None: ...

class FeedbackBatchAck(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[FeedbackAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[FeedbackAck, _Mapping]]] = ...) -> None: ...
