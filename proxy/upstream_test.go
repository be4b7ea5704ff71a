package proxy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/internal/pgtest"
)

// privateCluster starts a cluster of the test's own, with the demo schema,
// for tests that stop and start the server. It is stopped after the test
// (after the proxy, whose cleanup is registered later).
func privateCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	c, err := pgtest.Start()
	if errors.Is(err, pgtest.ErrNoPostgres) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.CreateDemo(ctx); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail())
	}
	return c
}

// upstreamLost are the SQLSTATEs a client may get when its server goes
// away: pgmoat's 08006 (connection failure), or the server's own 57P01
// (admin_shutdown) relayed as it was sent.
var upstreamLost = map[string]bool{"08006": true, "57P01": true}

// TestUpstreamRestart stops the server under open sessions (idle, in a
// transaction, running a query; tenant and admin), checks that each client
// gets an error and is closed, that new clients are refused with 08006
// while the server is down, and that the same pgmoat serves them once it is
// back.
func TestUpstreamRestart(t *testing.T) {
	c := privateCluster(t)
	p := startProxy(t, func(cfg *config.Config) {
		cfg.Upstream.DSN = c.DSN("pgmoat", "pgmoat_secret", "app")
	})
	ctx := context.Background()

	for _, mode := range []string{"fast", "immediate"} {
		t.Run(mode, func(t *testing.T) {
			idle := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
			admin := p.connect(t, "dba", "dba_secret", pgx.QueryExecModeCacheStatement)
			inTx := p.connect(t, "globex_app", "globex_secret", pgx.QueryExecModeCacheStatement)
			tx, err := inTx.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			wantOnly(t, tenantsOf(t, inTx, "select tenant_id from orders"), "globex")

			busy := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
			busyErr := make(chan error, 1)
			go func() {
				_, err := busy.Exec(ctx, "select pg_sleep(600)")
				busyErr <- err
			}()
			waitForQuery(t, c, "select pg_sleep(600)")

			if err := c.StopServer(mode); err != nil {
				t.Fatal(err)
			}

			for name, conn := range map[string]*pgx.Conn{"idle": idle, "admin": admin, "in transaction": inTx} {
				code := sqlstate(waitClosed(t, conn.PgConn()))
				if !upstreamLost[code] {
					t.Errorf("%s client: SQLSTATE %q, want 08006 or 57P01", name, code)
				}
				t.Logf("%s client: SQLSTATE %s", name, code)
			}
			code := sqlstate(<-busyErr)
			if !upstreamLost[code] {
				t.Errorf("client running a query: SQLSTATE %q, want 08006 or 57P01", code)
			}
			t.Logf("client running a query: SQLSTATE %s", code)
			if err := tx.Commit(ctx); err == nil {
				t.Error("COMMIT succeeded on a connection whose server went away")
			}

			// While the server is down pgmoat refuses new clients
			// itself, after authenticating them.
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err = pgx.Connect(cctx, p.dsn("acme_app", "acme_secret"))
			cancel()
			if code := sqlstate(err); code != "08006" {
				t.Errorf("connect while the server is down: %v, want SQLSTATE 08006", err)
			}

			if err := c.StartServer(); err != nil {
				t.Fatal(err)
			}
			// The first attempt after the restart succeeds: pgmoat keeps
			// no memory of the outage.
			for _, u := range []struct{ user, password, tenant string }{{"acme_app", "acme_secret", "acme"}, {"globex_app", "globex_secret", "globex"}} {
				conn := p.connect(t, u.user, u.password, pgx.QueryExecModeCacheStatement)
				wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), u.tenant)
				wantOnly(t, tenantsOf(t, conn, "select current_setting('app.current_tenant_id')"), u.tenant)
			}
		})
	}
}

// TestUpstreamBackendTerminated: the server ends one session (a DBA's
// pg_terminate_backend); that client gets the server's FATAL and is closed,
// and another client is unaffected.
func TestUpstreamBackendTerminated(t *testing.T) {
	c := privateCluster(t)
	p := startProxy(t, func(cfg *config.Config) {
		cfg.Upstream.DSN = c.DSN("pgmoat", "pgmoat_secret", "app")
	})
	ctx := context.Background()
	victim := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	other := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	var pid int
	if err := victim.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	su, err := pgx.Connect(ctx, c.DSN("postgres", "", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	var ok bool
	if err := su.QueryRow(ctx, "select pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend: %v %v", ok, err)
	}
	if code := sqlstate(waitClosed(t, victim.PgConn())); !upstreamLost[code] {
		t.Errorf("terminated client: SQLSTATE %q, want 08006 or 57P01", code)
	}
	wantOnly(t, tenantsOf(t, other, "select tenant_id from orders"), "acme")
}

// waitForQuery waits until the server runs a query containing sql in some
// session (pgmoat may have put the tenant setting in front of it).
func waitForQuery(t *testing.T, c *pgtest.Cluster, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN("postgres", "", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for {
		var n int
		err := conn.QueryRow(ctx, "select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() and strpos(query, $1) > 0", sql).Scan(&n)
		if err != nil {
			t.Fatalf("waiting for %q to run: %v", sql, err)
		}
		if n > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConnectTimeout: an upstream that accepts TCP connections but never
// answers (a hung server, a black-holed route behind a proxy) fails the
// connection after the connect timeout instead of holding the client. The
// test would hang without the timeout.
func TestConnectTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close() // silent until the listener closes
		}
	}()
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	connector, err := NewPgConnector("host="+host+" port="+port+" user=pgmoat dbname=app sslmode=disable", "", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connector.Connect(context.Background(), nil); err == nil {
		t.Fatal("connected to a server that never answered")
	}
	if _, err := connector.Open(context.Background()); err == nil {
		t.Fatal("opened a connection to a server that never answered")
	}
}

// slowWriteConn makes each write return 30 ms after it sent its bytes, as
// a loaded machine can: after 15 ms pgconn starts reading in the background
// (its defence against a write/read deadlock), the server's answer arrives
// and is read while the write still seems to be going on, and the
// background reader goes on to wait for more.
type slowWriteConn struct{ net.Conn }

func (c slowWriteConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	time.Sleep(30 * time.Millisecond)
	return n, err
}

// TestConnectHandsOverTheSocket: when pgconn's background reader ran
// during the login, it may still be waiting on the socket afterwards;
// Connect must not hand the connection over until it has let go, or the
// server's first reply would vanish into it and the session would hang
// (seen under pgbench -C on a loaded machine).
func TestConnectHandsOverTheSocket(t *testing.T) {
	c := pgtest.Shared(t)
	connector, err := NewPgConnector(c.DSN("pgmoat", "pgmoat_secret", "app"), "", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	connector.cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return slowWriteConn{conn}, nil
	}
	for i := range 3 {
		sc, err := connector.Connect(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		// The guard only keeps a regression from hanging the test run.
		sc.SetDeadline(time.Now().Add(20 * time.Second))
		fe := pgproto3.NewFrontend(sc, sc)
		fe.Send(&pgproto3.Query{String: "select 1"})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("connection %d: no reply to the first query: %v", i, err)
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		sc.Close()
	}
}
