// Package bench holds the files of `make bench`: the multi-tenant pgbench
// schema (schema.sql) and the pgbench scripts (scripts/*.sql), embedded so
// that the runner (bench/runner) works from any directory. The bare relay is
// bench/relay; BENCHMARKS.md at the repository root describes the method and
// holds a run.
package bench

import "embed"

// Files holds schema.sql and scripts/*.sql.
//
//go:embed schema.sql scripts/*.sql
var Files embed.FS
