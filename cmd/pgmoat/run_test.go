package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmoat/pgmoat/internal/pgtest"
)

const signalConfig = `listen: %s
metrics_listen: %s
upstream:
  dsn: %q
users:
  - name: acme_app
    password: acme_secret
    tenant: acme
policy:
  shared:
    - name: public.plans
limits:
  shutdown_timeout: 1h
`

// TestRunSignals drives `pgmoat run` with a client inside a transaction and
// signals the process (the test's own: run is executed in-process). SIGTERM
// lets the transaction commit and then closes the session; SIGINT closes it
// at once, rolling the transaction back. Either way the client gets 57P01
// and run exits with 0. limits.shutdown_timeout is an hour: a SIGINT that
// waited for it would hang the test rather than pass.
func TestRunSignals(t *testing.T) {
	clearEnv(t)
	c := pgtest.Shared(t)
	tests := []struct {
		name string
		sig  syscall.Signal
		// inTx runs in the open transaction after the signal and returns
		// the rows of the transaction that must be committed.
		inTx func(t *testing.T, p *runningProxy, conn *pgx.Conn) int
	}{
		{"SIGTERM", syscall.SIGTERM, func(t *testing.T, p *runningProxy, conn *pgx.Conn) int {
			p.await(t, "the listener closed", func() error {
				nc, err := net.Dial("tcp", p.addr)
				if err != nil {
					return nil
				}
				nc.Close()
				return fmt.Errorf("%s still accepts connections", p.addr)
			})
			if _, err := conn.Exec(context.Background(), "commit"); err != nil {
				t.Fatalf("commit after SIGTERM: %v", err)
			}
			return 1
		}},
		{"SIGINT", syscall.SIGINT, func(*testing.T, *runningProxy, *pgx.Conn) int { return 0 }},
		// A second signal makes the graceful shutdown fast: the open
		// transaction ends now rather than after shutdown_timeout (1h).
		{"SIGTERM then SIGINT", syscall.SIGTERM, func(t *testing.T, p *runningProxy, conn *pgx.Conn) int {
			p.await(t, "the shutdown began", func() error {
				if !strings.Contains(p.stderr.String(), "shutting down") {
					return errors.New("no shutdown in the log yet")
				}
				return nil
			})
			if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			return 0
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			marker := fmt.Sprintf("signal-%d-%d", tt.sig, time.Now().UnixNano())
			t.Cleanup(func() {
				c.Exec(context.Background(), "app", fmt.Sprintf("delete from orders where status = '%s'", marker))
			})
			path := writeConfig(t, fmt.Sprintf(signalConfig, anyPort, anyPort, c.DSN("pgmoat", "pgmoat_secret", "app")))
			p := startRun(t, ctx, path)

			var conn *pgx.Conn
			p.await(t, "login", func() (err error) {
				conn, err = p.connect(t, "acme_app", "acme_secret")
				return err
			})
			if _, err := conn.Exec(ctx, "begin"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "insert into orders (tenant_id, amount, status) values ('acme', 1, $1)", marker); err != nil {
				t.Fatal(err)
			}
			// pgmoat is serving, so it handles the signal: it does not
			// kill the test.
			if err := syscall.Kill(os.Getpid(), tt.sig); err != nil {
				t.Fatal(err)
			}
			want := tt.inTx(t, p, conn)
			// The guard only keeps a broken build from hanging the test run.
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			if err := conn.PgConn().WaitForNotification(wctx); sqlstate(err) != "57P01" {
				t.Errorf("client after %s: %v, want SQLSTATE 57P01", tt.name, err)
			}
			if code := <-p.done; code != 0 {
				t.Fatalf("run exited with %d:\n%s", code, p.stderr.String())
			}
			var n int
			su, err := pgx.Connect(ctx, c.DSN("postgres", "", "app"))
			if err != nil {
				t.Fatal(err)
			}
			defer su.Close(ctx)
			if err := su.QueryRow(ctx, "select count(*) from orders where status = $1", marker).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != want {
				t.Errorf("%d rows of the transaction committed, want %d", n, want)
			}
		})
	}
}

// TestRunReadyzFollowsUpstream: /readyz turns 503 while the server is down
// (the catalog refresh fails) and 200 again once it is back, and pgmoat
// serves clients again without a restart.
func TestRunReadyzFollowsUpstream(t *testing.T) {
	clearEnv(t)
	c, err := pgtest.Start()
	if errors.Is(err, pgtest.ErrNoPostgres) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	ctx := context.Background()
	if err := c.CreateDemo(ctx); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGMOAT_POLICY_CATALOG_REFRESH", "100ms")
	path := writeConfig(t, fmt.Sprintf(signalConfig, anyPort, anyPort, c.DSN("pgmoat", "pgmoat_secret", "app")))
	rctx, cancel := context.WithCancel(ctx)
	p := startRun(t, rctx, path)
	t.Cleanup(func() { cancel(); <-p.done })

	readyz := func(want int) func() error {
		return func() error {
			resp, err := http.Get("http://" + p.metricsAddr + "/readyz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				return fmt.Errorf("/readyz: %s, want %d", resp.Status, want)
			}
			return nil
		}
	}
	p.await(t, "ready", readyz(http.StatusOK))
	if err := c.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	p.await(t, "unready while the server is down", readyz(http.StatusServiceUnavailable))
	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	p.await(t, "ready again", readyz(http.StatusOK))
	conn, err := p.connect(t, "acme_app", "acme_secret")
	if err != nil {
		t.Fatal(err)
	}
	var tenant string
	if err := conn.QueryRow(ctx, "select current_setting('app.current_tenant_id')").Scan(&tenant); err != nil || tenant != "acme" {
		t.Errorf("tenant %q, %v; want acme", tenant, err)
	}
}
