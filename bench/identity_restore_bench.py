"""What an alerts instance pays at start to read the whole identity topic (README
"Scaling out", *What is global*): a broker of its own, ``--records`` identity records
(one per address, as the compacted topic keeps them) over ``--partitions`` partitions,
then the restore the alerts consumer does, timed: wall, CPU (user+sys of this process,
which also runs the reader) and the identity table's size.

    .venv/bin/python bench/identity_restore_bench.py [--records 65536] [--partitions 12]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from consumers.identity import IdentityBook, apply_identities  # noqa: E402
from kaspwatch.bus import Record  # noqa: E402
from kaspwatch.bus.globaltable import KafkaGlobalTopic  # noqa: E402
from kaspwatch.event import format_ts  # noqa: E402
from kaspwatch.identity import Identity  # noqa: E402
from tests.testenv import KAFKA_SH, free_port  # noqa: E402


async def fill(bootstrap: str, topic: str, records: int, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    await prod.start()
    try:
        ts = format_ts(1_750_000_000 * 10**9)
        for i in range(records):
            addr = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            mac = f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
            ident = Identity(addr, ts, "s", "dhcp", mac, f"WS-{i:06d}", lease_s=86400)
            await prod.send(topic, ident.to_json(), key=addr.encode())
        await prod.flush()
    finally:
        await prod.stop()


async def restore(bootstrap: str, topic: str) -> str:
    book = IdentityBook()

    async def dead(rec: Record, reason: str) -> None:
        raise SystemExit(f"dead letter {rec.offset}: {reason}")

    table = KafkaGlobalTopic(bootstrap, topic, "bench")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0, wall0 = time.process_time(), time.monotonic()
    try:
        parts = await table.start()
        count, complete = await table.restore(apply_identities(book, dead))
    finally:
        await table.stop()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        f"restored {count} records from {parts} partitions (complete: {complete}) into "
        f"{len(book)} addresses: wall {wall:.2f} s, CPU {cpu:.2f} s (user+sys), "
        f"{count / cpu:,.0f} records per CPU second; max RSS {rss0 / 1024:.0f} -> "
        f"{rss / 1024:.0f} MiB"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=65_536)
    p.add_argument("--partitions", type=int, default=12)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KAFKA_RUN_DIR": f"{tmp}/kafka", "KAFKA_PORT": str(free_port()),
               "KAFKA_CONTROLLER_PORT": str(free_port())}  # fmt: skip
        out = subprocess.run(["bash", str(KAFKA_SH), "start"], env=env, stdout=subprocess.PIPE,
                             text=True, check=True)  # fmt: skip
        bootstrap = out.stdout.strip().splitlines()[-1]
        try:
            asyncio.run(fill(bootstrap, "identity-bench", args.records, args.partitions))
            print(asyncio.run(restore(bootstrap, "identity-bench")))
        finally:
            subprocess.run(["bash", str(KAFKA_SH), "stop"], env=env, check=False, timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
