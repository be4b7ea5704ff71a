package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// The package-wide cluster that Shared starts on first use and Main stops.
var shared struct {
	once    sync.Once
	cluster *Cluster
	err     error
}

// Main runs the tests and then stops the shared cluster, if Shared started
// one. Use it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if c := shared.cluster; c != nil {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	return code
}

// Shared returns the test binary's cluster, starting it and loading the
// demo schema (CreateDemo) on first use. It skips the test when no
// PostgreSQL binaries exist and fails it on any other error. Tests share
// the cluster and its "app" database: a test that changes rows should work
// in a transaction it rolls back, or in its own copy of the database.
// Without Main the cluster is stopped only by its watchdog, when the test
// process exits.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	shared.once.Do(func() {
		c, err := Start()
		if err != nil {
			shared.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.CreateDemo(ctx); err != nil {
			shared.err = fmt.Errorf("%w\nserver log:\n%s", err, c.LogTail())
			c.Stop()
			return
		}
		shared.cluster = c
	})
	if errors.Is(shared.err, ErrNoPostgres) {
		t.Skip(shared.err)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.cluster
}
