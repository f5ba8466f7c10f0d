"""Server settings compared under the same machine: short load blocks alternate between running servers.

    python bench/serving_ab.py --export_dir=<export> --variant shipped= \\
        --variant spinning=--tensorflow_thread_spinning --blocks=20 --block_s=4 --out=ab.json

This machine's speed drifts within minutes (docs/benchmarks.md, "Idle TensorFlow threads that
sleep"), so two settings measured one after the other differ by the drift as much as by the setting.
Here every variant's server (``--enable_batching`` with ``serving_config/batching.config``, then the
variant's flags) is up for the whole run, and blocks of ``--block_s`` seconds of the lean
generator's closed-loop load (``serving_load.lean_load``) go to each in turn, the order reversed
every other block (ABBA), so that each pair of blocks sees the same machine. Reported per variant:
the latency percentiles of all its blocks' requests pooled, the medians of its blocks' figures, and,
for every variant after the first, the median of its block-by-block ratios to the first and in how
many blocks it did better.
"""
import argparse
import json
import pathlib

import numpy as np
from serving_load import ServerProcess, figures, lean_load

RATIOS = {"throughput_rps": "higher", "p50_ms": "lower", "p99_ms": "lower", "server_cpu_ms_per_request": "lower"}
P99_TARGET_MS = 20  # issue 18's p99 at 16 clients


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """``name=flags``: the server flags (space-separated) of one variant; ``name=`` runs the shipped settings."""
    name, separator, flags = text.partition("=")
    if not name or not separator:
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS, got {text!r}")
    return name, tuple(flags.split())


def run_blocks(servers: dict[str, ServerProcess], user_ids: list[str],
               flags: argparse.Namespace) -> tuple[dict[str, list[dict]], dict[str, list[float]]]:
    """Each block's figures and every request's latency, per variant."""
    blocks = {name: [] for name in servers}
    latencies = {name: [] for name in servers}
    names = list(servers)
    for block in range(flags.blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            server = servers[name]
            sample = lean_load([server.port], user_ids, flags.clients, flags.block_s, flags.warmup_s, flags.k,
                               (server.pid,))
            latencies[name].extend(sample[0])
            blocks[name].append(figures(*sample, flags.block_s))
            print(f"block {block} {name}: {json.dumps({key: round(blocks[name][-1][key], 2) for key in RATIOS})}",
                  flush=True)
    return blocks, latencies


def summary(blocks: dict[str, list[dict]], latencies: dict[str, list[float]]) -> dict:
    first = next(iter(blocks))
    report = {}
    for name, measured in blocks.items():
        pooled_ms = 1e3 * np.array(latencies[name])
        report[name] = {
            "requests": len(pooled_ms), "errors": sum(block["errors"] for block in measured),
            "pooled_p50_ms": float(np.percentile(pooled_ms, 50)), "pooled_p99_ms": float(np.percentile(pooled_ms, 99)),
            f"blocks_p99_under_{P99_TARGET_MS}_ms": sum(block["p99_ms"] <= P99_TARGET_MS for block in measured),
            **{f"median_block_{key}": float(np.median([block[key] for block in measured])) for key in RATIOS}}
        if name != first:
            for key, better in RATIOS.items():
                ratios = np.array([mine[key] / theirs[key] for mine, theirs in zip(measured, blocks[first])])
                report[name][f"{key}_ratio_to_{first}"] = float(np.median(ratios))
                report[name][f"{key}_better_blocks"] = int(np.sum(ratios > 1 if better == "higher" else ratios < 1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export_dir", default="export", help="a train export (recommender/, models.config)")
    parser.add_argument("--variant", type=parse_variant, action="append", required=True,
                        help="NAME=FLAGS, repeatable; the first is what the others are compared with")
    parser.add_argument("--blocks", type=int, default=20, help="blocks per variant")
    parser.add_argument("--block_s", type=float, default=4, help="measured seconds of one block")
    parser.add_argument("--warmup_s", type=float, default=0.5, help="unmeasured seconds at the start of a block")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num_users", type=int, default=6040, help="user ids 1..N are sampled uniformly")
    parser.add_argument("--out", help="write the figures as JSON here")
    flags = parser.parse_args()
    export_dir = pathlib.Path(flags.export_dir).resolve()
    user_ids = [str(user) for user in range(1, flags.num_users + 1)]
    servers = {}
    try:
        for name, server_flags in flags.variant:
            servers[name] = ServerProcess(export_dir, batching=True, extra_flags=server_flags)
            lean_load([servers[name].port], user_ids, flags.clients, 2, 0, flags.k, ())  # its first batches
        blocks, latencies = run_blocks(servers, user_ids, flags)
    finally:
        for server in servers.values():
            server.stop()
    report = summary(blocks, latencies)
    for name, figures_of_variant in report.items():
        print(f"{name}: {json.dumps({key: round(value, 3) for key, value in figures_of_variant.items()})}")
    if flags.out:
        pathlib.Path(flags.out).write_text(json.dumps(
            {"export_dir": str(export_dir), "clients": flags.clients, "block_s": flags.block_s,
             "variants": {name: list(server_flags) for name, server_flags in flags.variant},
             "summary": report, "blocks": blocks}, indent=2) + "\n")


if __name__ == "__main__":
    main()
