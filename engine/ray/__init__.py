"""vmatch on Ray: resumable, fault-tolerant backfills (`vmatch backfill`) and sharded queries
(`vmatch query --ray`), on a local Ray or a cluster.

Modules: `session` (start or join Ray, the `ray:` config section; `cluster` is its old name),
`input_list` (the input videos: lists and folders; `manifest` is its old name),
`ledger` (the SQLite job state), `actors` (decode/hash and GPU feature workers),
`backfill` (the driver), `shard_query` (one actor per index shard).
"""
