package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmoat/pgmoat/config"
)

// serveAgain serves p's server on a second listener of the test's own, so
// that the test decides how that Serve's context ends. It returns a copy of
// p that connects there, the context's cancel (cancel(nil) is a graceful
// shutdown, as on SIGTERM) and a channel closed when that Serve returns.
//
// Both Serves share the server's sessions: the test makes all its
// connections through the copy.
func serveAgain(t *testing.T, p *testProxy) (q *testProxy, shut context.CancelCauseFunc, done <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	served := make(chan struct{})
	go func() { p.srv.Serve(ctx, ln); close(served) }()
	t.Cleanup(func() { cancel(nil); <-served })
	cp := *p
	cp.addr = ln.Addr().String()
	return &cp, cancel, served
}

// backendPID is the pid of conn's server session, asked through pgmoat.
func backendPID(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	var pid int
	if err := conn.QueryRow(context.Background(), "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// awaitBackendsGone polls the server, as superuser, until none of pids is
// a server session any more. The bound is far below the pg_sleep the tests
// run, so a backend left running its statement fails the test.
func awaitBackendsGone(t *testing.T, p *testProxy, pids ...int) {
	t.Helper()
	ctx := context.Background()
	su, err := pgx.Connect(ctx, p.cluster.DSN("postgres", "", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	bound := time.Now().Add(30 * time.Second)
	for {
		var running []string
		err := su.QueryRow(ctx, "select coalesce(array_agg(format('%s %s: %s', pid, state, query)), '{}') from pg_stat_activity where pid = any($1)", pids).Scan(&running)
		if err != nil {
			t.Fatal(err)
		}
		if len(running) == 0 {
			return
		}
		if time.Now().After(bound) {
			t.Fatalf("server sessions of closed clients still there: %q", running)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countStatus counts the orders (of every tenant) whose status is marker,
// as superuser.
func countStatus(t *testing.T, p *testProxy, marker string) int {
	t.Helper()
	ctx := context.Background()
	su, err := pgx.Connect(ctx, p.cluster.DSN("postgres", "", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	var n int
	if err := su.QueryRow(ctx, "select count(*) from orders where status = $1", marker).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFastShutdown: a context cancelled with ErrFastShutdown (SIGINT) ends
// every session at once with 57P01, whatever it is doing: an open
// transaction rolls back and a statement running upstream is cancelled
// rather than left running on the server. limits.shutdown_timeout is an
// hour, so a shutdown that waited for it would hang the test rather than
// pass.
func TestFastShutdown(t *testing.T) {
	base := startProxy(t, func(c *config.Config) { c.Limits.ShutdownTimeout = time.Hour })
	p, shut, done := serveAgain(t, base)
	ctx := context.Background()
	marker := fmt.Sprintf("fast-shutdown-%d", time.Now().UnixNano())

	idle := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	inTx := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	pids := []int{backendPID(t, idle), backendPID(t, inTx)}
	if _, err := inTx.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := inTx.Exec(ctx, "insert into orders (tenant_id, amount, status) values ('acme', 1, $1)", marker); err != nil {
		t.Fatal(err)
	}
	// Sessions running a statement upstream: a tenant's and an admin's
	// (which bypasses the rewrite, so pgmoat tracks it differently).
	type running struct {
		user string
		err  chan error
	}
	var sleepers []running
	for _, u := range []struct{ user, password string }{{"globex_app", "globex_secret"}, {"dba", "dba_secret"}} {
		conn := p.connect(t, u.user, u.password, pgx.QueryExecModeCacheStatement)
		pids = append(pids, backendPID(t, conn))
		sql := fmt.Sprintf("select pg_sleep(600) -- %s %s", marker, u.user)
		r := running{u.user, make(chan error, 1)}
		go func() {
			_, err := conn.Exec(ctx, sql)
			r.err <- err
		}()
		waitForQuery(t, p.cluster, sql)
		sleepers = append(sleepers, r)
	}

	shut(fmt.Errorf("test: %w", ErrFastShutdown))

	for name, conn := range map[string]*pgx.Conn{"idle session": idle, "session in a transaction": inTx} {
		if got := sqlstate(waitClosed(t, conn.PgConn())); got != "57P01" {
			t.Errorf("%s: SQLSTATE %q, want 57P01", name, got)
		}
	}
	for _, r := range sleepers {
		if err := <-r.err; sqlstate(err) != "57P01" {
			t.Errorf("%s running pg_sleep: %v, want SQLSTATE 57P01", r.user, err)
		}
	}
	<-done // Serve returns once its listener is closed
	awaitBackendsGone(t, p, pids...)
	if n := countStatus(t, p, marker); n != 0 {
		t.Errorf("%d rows of the open transaction were committed, want 0", n)
	}
}

// TestGracefulShutdown: a context cancelled for any other cause (SIGTERM)
// closes idle sessions at once, and lets a session inside a transaction
// finish it: it may run statements and commit, and is closed at the
// boundary. The deadline (an hour) never passes in the test.
func TestGracefulShutdown(t *testing.T) {
	base := startProxy(t, func(c *config.Config) { c.Limits.ShutdownTimeout = time.Hour })
	p, shut, done := serveAgain(t, base)
	ctx := context.Background()
	marker := fmt.Sprintf("graceful-shutdown-%d", time.Now().UnixNano())
	t.Cleanup(func() {
		p.cluster.Exec(context.Background(), "app", fmt.Sprintf("delete from orders where status = '%s'", marker))
	})

	idle := p.connect(t, "globex_app", "globex_secret", pgx.QueryExecModeCacheStatement)
	inTx := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	if _, err := inTx.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	shut(errors.New("test: SIGTERM"))

	if got := sqlstate(waitClosed(t, idle.PgConn())); got != "57P01" {
		t.Errorf("idle session: SQLSTATE %q, want 57P01", got)
	}
	if _, err := inTx.Exec(ctx, "insert into orders (tenant_id, amount, status) values ('acme', 1, $1)", marker); err != nil {
		t.Fatalf("statement in the open transaction during the shutdown: %v", err)
	}
	if _, err := inTx.Exec(ctx, "commit"); err != nil {
		t.Fatalf("commit during the shutdown: %v", err)
	}
	if got := sqlstate(waitClosed(t, inTx.PgConn())); got != "57P01" {
		t.Errorf("session after its commit: SQLSTATE %q, want 57P01", got)
	}
	<-done
	if n := countStatus(t, p, marker); n != 1 {
		t.Errorf("%d rows committed during the shutdown, want 1", n)
	}
}

// TestGracefulShutdownDeadline: a session that keeps its transaction open
// past limits.shutdown_timeout is closed with 57P01 and its transaction
// rolls back.
func TestGracefulShutdownDeadline(t *testing.T) {
	base := startProxy(t, func(c *config.Config) { c.Limits.ShutdownTimeout = 200 * time.Millisecond })
	p, shut, done := serveAgain(t, base)
	ctx := context.Background()
	marker := fmt.Sprintf("shutdown-deadline-%d", time.Now().UnixNano())

	inTx := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	pid := backendPID(t, inTx)
	if _, err := inTx.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := inTx.Exec(ctx, "insert into orders (tenant_id, amount, status) values ('acme', 1, $1)", marker); err != nil {
		t.Fatal(err)
	}
	shut(nil)
	if got := sqlstate(waitClosed(t, inTx.PgConn())); got != "57P01" {
		t.Errorf("session in a transaction: SQLSTATE %q, want 57P01", got)
	}
	<-done
	awaitBackendsGone(t, p, pid)
	if n := countStatus(t, p, marker); n != 0 {
		t.Errorf("%d rows of the open transaction were committed, want 0", n)
	}
}

// TestShutdownDuringLogin: a client still logging in when the shutdown
// begins gets 57P03 (cannot_connect_now), as PostgreSQL answers while it
// shuts down, rather than a connection failure.
func TestShutdownDuringLogin(t *testing.T) {
	base := startProxy(t, func(c *config.Config) {
		c.Users = append(slices.Clone(c.Users), config.User{Name: "clear_app", Password: "clear_secret", Tenant: "acme",
			Auth: config.AuthPassword, AllowCleartextWithoutTLS: true})
	})
	p, shut, done := serveAgain(t, base)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "clear_app", "database": "app"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := receive[*pgproto3.AuthenticationCleartextPassword](fe); err != nil {
		t.Fatal(err)
	}

	shut(errors.New("test: SIGTERM"))
	fe.Send(&pgproto3.PasswordMessage{Password: "clear_secret"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("no error before the connection closed: %v", err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			if e.Code != "57P03" || e.Severity != "FATAL" {
				t.Errorf("got %s %s %q, want FATAL 57P03", e.Severity, e.Code, e.Message)
			}
			break
		}
		if _, ok := msg.(*pgproto3.AuthenticationOk); !ok {
			t.Fatalf("got %T, want AuthenticationOk or ErrorResponse", msg)
		}
	}
	<-done
}
