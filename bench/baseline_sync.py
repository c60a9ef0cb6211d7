#!/usr/bin/python3
"""baseline_sync.py: the straightforward Python Reverse ETL sync that Backflow is compared with.

Usage:
  baseline_sync.py --dsn DSN --query SQL --key-column id --state FILE --url URL [--batch-size 1000]

One run: streams the query's rows through a psycopg2 server-side (named) cursor, fingerprints
each row (MD5 of its repr), compares it with the dict {key: fingerprint} that the previous run
pickled to FILE (empty if FILE does not exist), POSTs the added/updated rows and the deleted
keys as JSON batches of --batch-size records to URL over one keep-alive HTTP/1.1 connection,
and only when every batch got a 2xx reply writes the new dict to FILE (temporary file + fsync +
rename). Nothing is sent if the extraction fails. The password comes from PGPASSWORD.

Body of each batch: {"count": N, "records": [{"operation": "upsert"|"delete", "change":
"added"|"updated"|"deleted", "key": K, "fields": {...}}, ...]}.

Prints one JSON line on stdout: {"extracted", "added", "updated", "deleted", "unchanged",
"sent", "extract_diff_s", "deliver_s", "save_s", "duration_s"}. Exit code 1 on any failure.
"""

import argparse
import hashlib
import http.client
import json
import os
import pickle
import sys
import time
import urllib.parse

import psycopg2


def post_batches(url, records, batch_size):
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=60)
    path = parsed.path or "/"
    sent = 0
    try:
        for i in range(0, len(records), batch_size):
            batch = records[i:i + batch_size]
            body = json.dumps({"count": len(batch), "records": batch}, default=str).encode()
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status // 100 != 2:
                raise RuntimeError(f"POST {url}: HTTP {resp.status}")
            sent += len(batch)
    finally:
        conn.close()
    return sent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--query", required=True)
    ap.add_argument("--key-column", default="id")
    ap.add_argument("--state", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args()

    start = time.monotonic()
    previous = {}
    if os.path.exists(args.state):
        with open(args.state, "rb") as f:
            previous = pickle.load(f)

    current = {}
    changes = []
    counts = {"added": 0, "updated": 0, "deleted": 0, "unchanged": 0}
    with psycopg2.connect(args.dsn) as conn:
        with conn.cursor(name="baseline_sync") as cur:
            cur.itersize = 10000
            cur.execute(args.query)
            names = None
            key_index = None
            for row in cur:
                if names is None:
                    names = [d[0] for d in cur.description]
                    key_index = names.index(args.key_column)
                key = row[key_index]
                fp = hashlib.md5(repr(row).encode()).digest()
                current[key] = fp
                old = previous.get(key)
                if old == fp:
                    counts["unchanged"] += 1
                    continue
                change = "added" if old is None else "updated"
                counts[change] += 1
                changes.append({"operation": "upsert", "change": change, "key": key,
                                "fields": dict(zip(names, row))})
    conn.close()
    for key in previous.keys() - current.keys():
        counts["deleted"] += 1
        changes.append({"operation": "delete", "change": "deleted", "key": key,
                        "fields": {args.key_column: key}})
    extracted = time.monotonic()

    sent = post_batches(args.url, changes, args.batch_size)
    delivered = time.monotonic()

    tmp = args.state + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(current, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.state)
    done = time.monotonic()

    print(json.dumps({"extracted": len(current), **counts, "sent": sent,
                      "extract_diff_s": round(extracted - start, 3),
                      "deliver_s": round(delivered - extracted, 3),
                      "save_s": round(done - delivered, 3),
                      "duration_s": round(done - start, 3)}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - one line on stderr, exit 1
        print(f"baseline_sync: {e}", file=sys.stderr)
        sys.exit(1)
