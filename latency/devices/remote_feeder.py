#!/usr/bin/env python3
"""netadapt-lut feeder: decodes a compressed batch on the device (uploaded by latency/devices/ssh.py).

  netadapt_feed.py batch [runner args]     batch on stdin -> tflite_runner --batch - [runner args]
  netadapt_feed.py unpack BATCH_FILE DIR   batch file -> DIR/<cell_id>.tflite (prints the count)

Runs alone on the device (Python 3.7+, stdlib only), beside the runner, which it imports under
its device-side name. The encoder is `latency.devices.ssh_transfer.encode_batch`; this side's
code also decodes for tests and tools, so encoder and decoder are checked against each other.
"""
import io
import json
import os
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH_FORMAT = "netadapt-batch/1"
RUNNER_MODULE = "tflite_runner"  # the runner's module name on the device


def pool_file_name(sha256):
    """The device-side file of the weight pool with this SHA-256 (hex)."""
    return "pool-%s.bin" % sha256[:16]


def _pool_beside_me(sha256):
    with open(os.path.join(HERE, pool_file_name(sha256)), "rb") as f:
        return f.read()


def decode_batch(data, load_pool=None):
    """(cell_id, model bytes) pairs of a batch; `load_pool(sha256)` returns the weight pool the
    batch names (default: its file beside this script)."""
    data = zlib.decompress(data)
    view = memoryview(data)
    end = data.index(b"\n")
    head = json.loads(data[:end].decode("utf-8"))
    if head.get("format") != BATCH_FORMAT:
        raise ValueError("unknown batch format %r" % (head.get("format"),))
    pos = end + 1
    pool = None
    if head.get("pool"):
        pool = memoryview((load_pool or _pool_beside_me)(head["pool"]))
    items = []
    for _ in range(head["models"]):
        end = data.index(b"\n", pos)
        meta = json.loads(data[pos:end].decode("utf-8"))
        pos = end + 1
        chunks = []
        for literal, pool_off, length in meta["parts"]:
            chunks.append(view[pos:pos + literal])
            pos += literal
            if length:
                chunks.append(pool[pool_off:pool_off + length])
        model = b"".join(chunks)
        if len(model) != meta["size"] or (zlib.crc32(model) & 0xFFFFFFFF) != meta["crc"]:
            raise ValueError("model %r does not rebuild (size/CRC mismatch): stale pool file?" % (meta["cell_id"],))
        items.append((meta["cell_id"], model))
    return items


def main(argv):
    try:
        if argv[:1] == ["batch"]:
            items = decode_batch(sys.stdin.buffer.read())
        elif argv[:1] == ["unpack"] and len(argv) == 3:
            with open(argv[1], "rb") as f:
                items = decode_batch(f.read())
            if not os.path.isdir(argv[2]):
                os.makedirs(argv[2])
            for cell_id, model in items:
                with open(os.path.join(argv[2], "%s.tflite" % cell_id), "wb") as f:
                    f.write(model)
            print(len(items))
            return 0
        else:
            sys.stderr.write(__doc__)
            return 2
    except (OSError, ValueError, KeyError, zlib.error) as exc:
        sys.stderr.write("netadapt feeder: cannot decode the batch: %s: %s\n" % (type(exc).__name__, exc))
        return 2
    sys.path.insert(0, HERE)
    runner = __import__(RUNNER_MODULE)

    sys.stdin = io.TextIOWrapper(io.BytesIO(runner.encode_batch_stream(items)))
    return runner.main(["--batch", "-"] + argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
