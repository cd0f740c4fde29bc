"""The daemon's wire protocol, sans-I/O: typed messages and a codec between them and lists of zmq frames.

Pure: imports only the standard library, msgpack and numpy (never zmq, cupy, h5py), so every layer can use it and
it is tested without sockets. See docs/DAEMON.md, "Messages".
"""

from ringstream.protocol.codec import (
    ERROR_KINDS,
    FRAME_DTYPES,
    ProtocolError,
    decode,
    encode,
    frame_array,
    result_arrays,
    result_buffers,
    result_curves,
)
from ringstream.protocol.messages import (
    FIT_COLUMNS,
    MESSAGE_TYPES,
    PEAK_SEQ_KEY,
    PROTOCOL_VERSION,
    ControlReply,
    ControlRequest,
    Credit,
    EndOfStream,
    FrameAck,
    FrameHeader,
    Heartbeat,
    Message,
    OmegaPartial,
    PeakUpdate,
    Result,
    RunStart,
    Stop,
    WorkerGone,
    worker_identity,
)

__all__ = [
    "ERROR_KINDS",
    "FIT_COLUMNS",
    "FRAME_DTYPES",
    "MESSAGE_TYPES",
    "PEAK_SEQ_KEY",
    "PROTOCOL_VERSION",
    "ControlReply",
    "ControlRequest",
    "Credit",
    "EndOfStream",
    "FrameAck",
    "FrameHeader",
    "Heartbeat",
    "Message",
    "OmegaPartial",
    "PeakUpdate",
    "ProtocolError",
    "Result",
    "RunStart",
    "Stop",
    "WorkerGone",
    "decode",
    "encode",
    "frame_array",
    "result_arrays",
    "result_buffers",
    "result_curves",
    "worker_identity",
]
