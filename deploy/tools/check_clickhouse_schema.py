"""Applies overlays/clickhouse/schema.sql to an in-process ClickHouse engine (PyPI chdb), inserts
sample records and checks that every rollup materialized view received what it should.

Usage: python check_clickhouse_schema.py deploy/overlays/clickhouse/schema.sql
"""

import sys

from chdb import session


def main():
    text = open(sys.argv[1]).read()
    # The server's initdb runs the file through clickhouse-client, which handles comments; here
    # statements are sent one by one, so drop comment lines before splitting on ';'.
    text = "\n".join(l for l in text.splitlines() if not l.strip().startswith("--"))
    s = session.Session()
    for stmt in (x.strip() for x in text.split(";")):
        if stmt:
            s.query(stmt)
    # Run twice: every statement must be idempotent.
    for stmt in (x.strip() for x in text.split(";")):
        if stmt:
            s.query(stmt)
    s.query(
        """INSERT INTO flowlens.flows (flowStartSeconds, flowEndSeconds, flowType,
            sourcePodNamespace, sourcePodName, sourceNodeName, destinationPodNamespace,
            destinationPodName, destinationNodeName, sourceIP, destinationIP,
            destinationServicePortName, ingressNetworkPolicyName, octetDeltaCount,
            reverseOctetDeltaCount, packetDeltaCount)
        VALUES
            (now() - 60, now(), 2, 'a', 'p1', 'n1', 'b', 'p2', 'n2', '10.0.0.1', '10.0.0.2', 'b/svc:http', 'allow-a', 1000, 100, 10),
            (now() - 60, now(), 3, 'a', 'p1', 'n1', '', '', '', '10.0.0.1', '192.0.2.9', '', '', 500, 50, 5),
            (now() - 60, now(), 4, '', '', '', 'b', 'p2', 'n2', '192.0.2.9', '10.0.0.2', '', '', 70, 700, 7)"""
    )
    want = {
        # table: (rows, sum of octetDeltaCount; rollups call it octets)
        "flows": (3, 1570),
        "flows_pod_pair_1m": (1, 1000),
        "flows_pod_service_1m": (1, 1000),
        # Seen from the Pod: what it sent (500 to the outside; 700 reverse bytes of flowType 4).
        "flows_pod_external_1m": (2, 1200),
        "flows_node_pair_1m": (3, 1570),
        "flows_policy_1m": (1, 1000),
    }
    # Each per-minute rollup has an hourly twin with the same sums here (one minute of data).
    want.update({t.replace("_1m", "_1h"): v for t, v in want.items() if t.endswith("_1m")})
    bad = 0
    for table, (rows, octets) in want.items():
        col = "octetDeltaCount" if table == "flows" else "octets"
        got = s.query(f"SELECT count(), sum({col}) FROM flowlens.{table}", "CSV")
        got = tuple(int(x) for x in got.bytes().decode().strip().split(","))
        if got != (rows, octets):
            print(f"  schema.sql: {table}: (rows, octets) {got}, expected {(rows, octets)}", file=sys.stderr)
            bad += 1
    print(f"  ClickHouse schema: {len(want)} tables checked: {'FAILED' if bad else 'ok'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
