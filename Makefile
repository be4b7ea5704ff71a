# pgmoat. `make run` starts a demo (PostgreSQL + pgmoat), `make test` runs the
# tests against a throwaway PostgreSQL (see internal/pgtest).

GO ?= go

.PHONY: build run test bench bench-quick fmt clean

build:
	$(GO) build -o bin/pgmoat ./cmd/pgmoat

run:
	bash deploy/demo/run.sh

test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 12m ./...
	$(GO) test -run '^$$' -bench . -benchtime=1x ./... # benchmarks still run (a smoke test, not a measure)

# make bench: the Go benchmarks of the hot paths, briefly, then the pgbench
# comparison of PostgreSQL, a bare relay, PgBouncer and pgmoat (bench/runner,
# method and results in BENCHMARKS.md); under 10 minutes on 2 cores.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime=200ms ./...
	$(GO) run ./bench/runner -go $(GO)

# make bench-quick: the same as a smoke test, in about a minute.
bench-quick:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime=1x ./...
	$(GO) run ./bench/runner -go $(GO) -quick

fmt:
	$(GO) fmt ./...

clean:
	rm -rf bin
