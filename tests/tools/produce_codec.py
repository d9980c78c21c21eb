"""A producer that is not Tally's own: confluent-kafka (librdkafka from PyPI's wheel) writes
usage events with one compression codec, in batches large enough to be compressed.

usage: produce_codec.py BROKER TOPIC CODEC TENANT NAMESPACE COUNT
Event i (1..COUNT) has quantity i, so the namespace's total is COUNT * (COUNT + 1) / 2.
Exits non-zero unless every message was acknowledged.
"""

import datetime
import json
import sys

from confluent_kafka import Producer


def main() -> int:
    broker, topic, codec, tenant, namespace, count = sys.argv[1:7]
    producer = Producer(
        {
            "bootstrap.servers": broker,
            "compression.type": codec,
            "linger.ms": 50,
            "batch.num.messages": 200,
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(str(error))

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    for i in range(1, int(count) + 1):
        event = {
            "id": f"{codec}-{i}",
            "namespace": namespace,
            "metric_label": "http_lb_requests",
            "quantity": str(i),
            "timestamp": now.replace("+00:00", "Z"),
        }
        producer.produce(topic, key=tenant, value=json.dumps(event), on_delivery=delivered)
        producer.poll(0)
    left = producer.flush(60)
    if failures or left:
        print(f"{codec}: {len(failures)} failed, {left} unsent: {failures[:3]}", file=sys.stderr)
        return 1
    print(f"{codec}: {count} delivered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
