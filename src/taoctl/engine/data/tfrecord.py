"""TFRecord files and tf.train.Example records, without TensorFlow.

A TFRecord file is a sequence of records, each ``uint64 length | uint32 masked_crc32c(length) |
data | uint32 masked_crc32c(data)`` (little endian). The records TAO's converters write are
serialized ``tf.train.Example`` messages; ``proto/tf_example.proto`` is wire-compatible with
TensorFlow's, so shards written here train in TAO and TAO's shards read here.
"""

from __future__ import annotations

import contextlib
import glob
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import crc32c

from taoctl.engine.data.proto import tf_example_pb2 as pb
from taoctl.errors import TaoctlError
from taoctl.fileio import atomic_paths

_MASK_DELTA = 0xA282EAD8
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotated right by 15 bits plus a constant, as TensorFlow writes it."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class TFRecordWriter:
    """Writes records to ``path``, which appears whole on a clean close and not at all on an error.

    ``staging``: a ``fileio.atomic_paths()`` group the file joins, so it appears together with
    the group's other files (every shard of a dataset, or none); without one it appears on its
    own when the writer closes.
    """

    def __init__(self, path: str | os.PathLike, staging: Callable[[str | os.PathLike], Path] | None = None):
        self.path = Path(path)
        with contextlib.ExitStack() as stack:  # a failed open removes the temporary at once
            stage = staging or stack.enter_context(atomic_paths())
            self._file = stack.enter_context(open(stage(self.path), "wb"))
            self._stack = stack.pop_all()
        self.count = 0

    def write(self, record: bytes) -> None:
        length = _LENGTH.pack(len(record))
        self._file.write(length + _CRC.pack(masked_crc(length)) + record + _CRC.pack(masked_crc(record)))
        self.count += 1

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            # The records of a failed file are thrown away: flushing them may fail again (a full
            # disk) and would replace the error that stopped the writing.
            with contextlib.suppress(OSError):
                self._file.close()
        return self._stack.__exit__(exc_type, exc, tb)


def read_records(path: str | os.PathLike, verify: bool = True) -> Iterator[bytes]:
    """Yield each record's bytes; a truncated file or a CRC mismatch raises TaoctlError naming the offset."""
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TaoctlError(f"{path}: truncated TFRecord header at byte {offset}")
            length_bytes, (length_crc,) = header[:8], _CRC.unpack(header[8:])
            if verify and masked_crc(length_bytes) != length_crc:
                raise TaoctlError(f"{path}: corrupt TFRecord (length checksum) at byte {offset}")
            (length,) = _LENGTH.unpack(length_bytes)
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TaoctlError(f"{path}: truncated TFRecord at byte {offset}")
            if verify and masked_crc(data) != _CRC.unpack(footer)[0]:
                raise TaoctlError(f"{path}: corrupt TFRecord (data checksum) at byte {offset}")
            yield data


def _starts_as_tfrecord(path: str) -> bool:
    """A TFRecord file starts with a record length and that length's masked CRC (or is empty)."""
    with open(path, "rb") as handle:
        header = handle.read(12)
    return not header or (len(header) == 12 and struct.unpack("<I", header[8:])[0] == masked_crc(header[:8]))


def expand_paths(pattern: str | os.PathLike | Sequence[str]) -> list[str]:
    """Files a ``tfrecords_path`` names: a glob such as ``/data/tfrecords/kitti_trainval*``, or a list of them."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    files: list[str] = []
    for item in patterns:
        found = sorted(p for p in glob.glob(os.fspath(item)) if os.path.isfile(p) and not
                       os.path.basename(p).startswith("."))
        if glob.has_magic(os.fspath(item)):
            # TAO's sample specs glob a whole folder (``kitti_trainval/*``), where dataset_convert also
            # leaves its validation_report.json: a glob takes only the files that start as a TFRecord.
            found = [p for p in found if _starts_as_tfrecord(p)]
        if not found:
            raise TaoctlError(f"tfrecords_path {os.fspath(item)!r} matches no file")
        files += found
    return files


# --- tf.train.Example -----------------------------------------------------------------------

def bytes_feature(*values: bytes | str) -> pb.Feature:
    return pb.Feature(bytes_list=pb.BytesList(value=[v.encode() if isinstance(v, str) else v for v in values]))


def float_feature(*values: float) -> pb.Feature:
    return pb.Feature(float_list=pb.FloatList(value=[float(v) for v in values]))


def int64_feature(*values: int) -> pb.Feature:
    return pb.Feature(int64_list=pb.Int64List(value=[int(v) for v in values]))


def make_example(features: Mapping[str, pb.Feature]) -> bytes:
    """Serialize an Example from ``{key: bytes_feature(...) | float_feature(...) | int64_feature(...)}``."""
    example = pb.Example()
    for key, feature in features.items():
        example.features.feature[key].CopyFrom(feature)
    return example.SerializeToString(deterministic=True)


def parse_example(data: bytes) -> dict[str, list]:
    """Decode an Example into ``{key: list of values}`` (bytes, floats or ints as the feature holds)."""
    example = pb.Example()
    example.ParseFromString(data)
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = list(getattr(feature, kind).value) if kind else []
    return out
