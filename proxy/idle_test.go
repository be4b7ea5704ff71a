package proxy

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/rewrite"
)

func TestReadStopFirstReasonWins(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	r := newReadStop(server)
	if r.cause() != nil {
		t.Fatalf("cause before stop = %v", r.cause())
	}
	r.stop(errIdleTimeout)
	r.stop(errShutdown)
	if r.cause() != errIdleTimeout {
		t.Errorf("cause = %v, want the first reason", r.cause())
	}
	_, err := server.Read(make([]byte, 1))
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Errorf("read after stop: %v, want a timeout", err)
	}
}

// TestReadStopGatePanic: a panic under the gate releases it, so that a
// stopper does not wait forever, and redirect moves later interrupts.
func TestReadStopGatePanic(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	r := newReadStop(server)
	func() {
		defer func() { recover() }()
		r.gated(func() error { panic("boom") })
	}()
	interrupted := make(chan struct{}, 1)
	r.redirect(func() { interrupted <- struct{}{} })
	r.stop(errShutdown) // blocks forever if the gate is still held
	select {
	case <-interrupted:
	default:
		t.Fatal("stop did not call the redirected interrupt")
	}
	if err := r.gated(func() error { return nil }); err != errShutdown {
		t.Errorf("gated after stop = %v, want %v", err, errShutdown)
	}
}

func TestIdleTimer(t *testing.T) {
	t.Run("expires when idle", func(t *testing.T) {
		expired := make(chan struct{})
		it := newIdleTimer(time.Millisecond, func() bool { return true }, func() { close(expired) })
		defer it.stop()
		<-expired
	})
	t.Run("busy session is checked again, not expired", func(t *testing.T) {
		var checks atomic.Int32
		var idle atomic.Bool
		enough := make(chan struct{})
		expired := make(chan struct{})
		it := newIdleTimer(time.Millisecond, func() bool {
			if checks.Add(1) == 3 {
				close(enough)
			}
			return idle.Load()
		}, func() { close(expired) })
		defer it.stop()
		<-enough // three checks while busy, and no expiry
		select {
		case <-expired:
			t.Fatal("expired while busy")
		default:
		}
		idle.Store(true)
		<-expired
	})
	t.Run("stopped timer does not expire", func(t *testing.T) {
		it := newIdleTimer(time.Hour, func() bool { return true }, func() { t.Error("expired after stop") })
		it.stop()
		it.check() // as if the timer had fired concurrently with stop
	})
	t.Run("off", func(t *testing.T) {
		var it *idleTimer = newIdleTimer(0, nil, nil)
		if it != nil {
			t.Fatal("a timer without a timeout")
		}
		it.touch() // nil-safe
		it.stop()
	})
}

func TestAdminStateIdle(t *testing.T) {
	rfq := func(status byte) []byte { return []byte{'Z', 0, 0, 0, 5, status} }
	type step struct {
		client byte   // a client message type, or 0
		server []byte // a server message, or nil
	}
	tests := []struct {
		name  string
		steps []step
		idle  bool
	}{
		{"new session", nil, true},
		{"query sent", []step{{client: 'Q'}}, false},
		{"query answered", []step{{client: 'Q'}, {server: rfq('I')}}, true},
		{"transaction open", []step{{client: 'Q'}, {server: rfq('T')}}, false},
		{"failed transaction", []step{{client: 'Q'}, {server: rfq('E')}}, false},
		{"pipelined queries, first answered", []step{{client: 'Q'}, {client: 'Q'}, {server: rfq('I')}}, false},
		{"pipelined queries answered", []step{{client: 'Q'}, {client: 'Q'}, {server: rfq('I')}, {server: rfq('I')}}, true},
		{"extended without sync", []step{{client: 'P'}, {client: 'B'}, {client: 'E'}, {client: 'H'}}, false},
		{"extended with sync", []step{{client: 'P'}, {client: 'B'}, {client: 'E'}, {client: 'S'}}, false},
		{"extended answered", []step{{client: 'P'}, {client: 'B'}, {client: 'E'}, {client: 'S'}, {server: rfq('I')}}, true},
		{"row data is not a boundary", []step{{client: 'Q'}, {server: []byte{'D', 0, 0, 0, 6, 0, 0}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s adminState
			for _, st := range tt.steps {
				if st.client != 0 {
					s.client(st.client)
				} else {
					s.server(st.server)
				}
			}
			if got := s.idle(); got != tt.idle {
				t.Errorf("idle = %v, want %v", got, tt.idle)
			}
		})
	}
}

// waitClosed blocks until the server ends conn and returns the error it
// sent (a *pgconn.PgError for a FATAL ErrorResponse).
func waitClosed(t *testing.T, conn *pgconn.PgConn) error {
	t.Helper()
	// The guard only keeps a broken build from hanging the test run.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := conn.WaitForNotification(ctx)
	if ctx.Err() != nil {
		t.Fatal("the connection stayed open")
	}
	return err
}

func TestIdleTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	p := startProxy(t, func(c *config.Config) { c.Limits.IdleTimeout = timeout })
	// The sessions that must stay open get a longer timeout, so that a
	// slow machine's pauses between the test's own steps do not count.
	const stayTimeout = time.Second
	stay := startProxy(t, func(c *config.Config) { c.Limits.IdleTimeout = stayTimeout })
	ctx := context.Background()

	for _, u := range []struct{ user, password string }{{"acme_app", "acme_secret"}, {"dba", "dba_secret"}} {
		t.Run("idle client is closed/"+u.user, func(t *testing.T) {
			conn := p.connect(t, u.user, u.password, pgx.QueryExecModeCacheStatement)
			if _, err := conn.Exec(ctx, "select 1"); err != nil {
				t.Fatal(err)
			}
			if got := sqlstate(waitClosed(t, conn.PgConn())); got != "57P05" {
				t.Errorf("SQLSTATE %q, want 57P05", got)
			}
		})
		// A client waiting for its query is not idle: the query outlasts
		// the timeout several times and the session stays open.
		t.Run("long query/"+u.user, func(t *testing.T) {
			conn := stay.connect(t, u.user, u.password, pgx.QueryExecModeCacheStatement)
			for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
				if _, err := conn.Exec(ctx, "select pg_sleep($1::float8)", mode, (2 * stayTimeout).Seconds()); err != nil {
					t.Fatalf("%v: %v", mode, err)
				}
			}
			if _, err := conn.Exec(ctx, "select 1"); err != nil {
				t.Fatalf("after the long query: %v", err)
			}
		})
		// Idle in a transaction is idle_in_transaction_session_timeout's
		// business (the server's), not this one.
		t.Run("idle in transaction/"+u.user, func(t *testing.T) {
			conn := stay.connect(t, u.user, u.password, pgx.QueryExecModeCacheStatement)
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * stayTimeout)
			if _, err := tx.Exec(ctx, "select 1"); err != nil {
				t.Fatalf("in the transaction after a pause: %v", err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestIdleTimeoutOff(t *testing.T) {
	p := startProxy(t, nil) // limits.idle_timeout defaults to 0
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	time.Sleep(300 * time.Millisecond)
	wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")
}

// TestAuthTimeoutEndToEnd: a client that connects and then sends nothing,
// or stops in the middle of authentication, is closed after
// limits.auth_timeout.
func TestAuthTimeoutEndToEnd(t *testing.T) {
	p := startProxy(t, func(c *config.Config) { c.Limits.AuthTimeout = 200 * time.Millisecond })
	tests := []struct {
		name     string
		send     func(*pgproto3.Frontend) error
		sqlstate string // "" when no error is expected before the close
	}{
		{"silent after connecting", func(*pgproto3.Frontend) error { return nil }, ""},
		{"silent after the startup message", func(fe *pgproto3.Frontend) error {
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "acme_app", "database": "app"}})
			return fe.Flush()
		}, "57014"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// The guard only keeps a broken build from hanging the test run.
			conn.SetDeadline(time.Now().Add(time.Minute))
			fe := pgproto3.NewFrontend(conn, conn)
			if err := tt.send(fe); err != nil {
				t.Fatal(err)
			}
			var code string
			for {
				msg, err := fe.Receive()
				if err != nil {
					if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
						t.Fatal("the connection stayed open")
					}
					break // closed by pgmoat
				}
				if e, ok := msg.(*pgproto3.ErrorResponse); ok {
					code = e.Code
				}
			}
			if tt.sqlstate != "" && code != tt.sqlstate {
				t.Errorf("SQLSTATE %q, want %s", code, tt.sqlstate)
			}
		})
	}
}

// A session whose last replies have not reached the client is not idle,
// even once the server's ReadyForQuery has been seen: shutdown, revocation
// and the idle timeout must not cut off the end of its results.
func TestUnflushedIsNotIdle(t *testing.T) {
	c := &session{rw: rewrite.NewSession(rewrite.Config{Setting: "app.current_tenant_id", Tenant: "acme", Marker: "m"})}
	if !c.idle() {
		t.Fatal("a new session is not idle")
	}
	c.unflushed.Store(true)
	if c.idle() {
		t.Error("idle with replies not yet sent to the client")
	}
}
