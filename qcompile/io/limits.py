"""Every size limit and threshold of qcompile's model I/O, in bytes, in one place.

Protobuf encodes and parses one message of at most ``PROTOBUF_MAX_BYTES`` = 2^31 - 1 bytes (its sizes are
int32).  Code that serialises a whole model (fingerprints, onnx.checker, ORT sessions from bytes) does so only
while its size is at most ``SERIALISABLE_BYTES`` = ``PROTOBUF_MAX_BYTES`` - 64 MiB, a margin under the hard limit.
Loading refuses a model over ``DEFAULT_MAX_BYTES`` unless the caller raises it; saving moves initializers to an
external data file above ``EXTERNAL_DATA_THRESHOLD``.
"""

from __future__ import annotations

__all__ = [
    "BYTESIZE_DIRECT_LIMIT",
    "DEFAULT_MAX_BYTES",
    "EXTERNAL_ALIGNMENT",
    "EXTERNAL_ALIGN_MIN_BYTES",
    "EXTERNAL_DATA_MIN_TENSOR_BYTES",
    "EXTERNAL_DATA_THRESHOLD",
    "PROTOBUF_MAX_BYTES",
    "SERIALISABLE_BYTES",
    "SERIALISE_HEADROOM_BYTES",
]

#: Protobuf cannot encode or parse one message larger than this.
PROTOBUF_MAX_BYTES = 2**31 - 1
#: The margin kept under PROTOBUF_MAX_BYTES by code that serialises a whole model.
SERIALISE_HEADROOM_BYTES = 64 << 20
#: Models at most this large (serialized) may be encoded as one message.
SERIALISABLE_BYTES = PROTOBUF_MAX_BYTES - SERIALISE_HEADROOM_BYTES

#: load_model refuses models (with their external data) larger than this unless given another max_bytes.
DEFAULT_MAX_BYTES = 16 * 2**30
#: Above this serialized size save_model moves initializers to an external data file.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)
#: Initializers at least this large (bytes) go to the external data file when one is written.
EXTERNAL_DATA_MIN_TENSOR_BYTES = 1024
#: Tensors with at least this many raw bytes are written at offsets aligned to EXTERNAL_ALIGNMENT.
EXTERNAL_ALIGN_MIN_BYTES = 64 * 1024
EXTERNAL_ALIGNMENT = 4096

#: Messages whose tensors hold fewer bytes than this are measured with protobuf's own ByteSize.
BYTESIZE_DIRECT_LIMIT = 64 * 2**20
