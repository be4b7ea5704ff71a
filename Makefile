# pgmoat. `make run` starts a demo (PostgreSQL + pgmoat), `make test` runs the
# tests against a throwaway PostgreSQL (see internal/pgtest).

GO ?= go

.PHONY: build run test bench fmt clean

build:
	$(GO) build -o bin/pgmoat ./cmd/pgmoat

run:
	bash deploy/demo/run.sh

test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 12m ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

fmt:
	$(GO) fmt ./...

clean:
	rm -rf bin
